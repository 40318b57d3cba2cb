"""Issue 22's totals, from the saved runs: 10-shot prompting against `auto` on every task nobody tuned on, by model.

For each model and task (40 demonstrations posted; the run with the most test items, then the latest, as
`verdict_calibration.run_key` picks it), `auto` is read off the run's candidates by the rule as it is now
(`steer eval`'s `auto_from_candidates`), so a run made before context tuning or `choose` counts as `auto` would
choose today; a run of `auto` alone counts when it chose among every candidate there is now. The groups: each held-out
set (`steering/eval/unseen*/`), all of them, the eight packaged tasks outside the development suite, everything
nobody tuned on, the knowledge lookups of the held-out sets, and the development suite apart.

    python -m scripts.totals $(find docs/results/issue22 -name results.json | sort)
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts.merge_results import chose_among
from scripts.verdict_calibration import run_cli, run_key
from steering.eval.config import DEFAULT_TASKS, EvalConfig
from steering.eval.suite import auto_from_candidates
from steering.eval.task_source import UNSEEN_DIR, available_tasks
from steering.methods.registry import auto_candidates

DEMONSTRATIONS = 40
# Measured in round 11 as the packaged tasks nothing was tuned on (the other five outside the suite were development
# tasks of some round, or too small for 40 demonstrations and 20 test items).
OUTSIDE_THE_SUITE = (
    "category",
    "english_spanish",
    "last_letter",
    "next_number",
    "number_to_word",
    "product_company",
    "reverse_list",
    "sentiment",
)
# The held-out tasks whose answer is a name or a code the model must know, classed when each set was set aside or
# measured (docs/RESULTS.md, issue 22's rounds; each set's README says what kind each task is).
LOOKUPS = frozenset(
    {
        "country_alpha3",
        "country_official_name",
        "currency_code",
        "language_name",
        "element_name",
        "element_number",
        "city_country",
        "country_language",
        "language_endonym",
        "us_city_state",
        "province_country",
        "country_demonym",
        "country_calling_code",
        "emoji_name",
        "airport_city",
        "unit_symbol",
        "color_hex",
        "city_timezone",
        "word_phones",
        "zip_state",
        "nickname_name",
        "ticker_company",
        "extension_language",
        "hanzi_pinyin",
        "endonym_country",
        "spdx_license_name",
        "star_constellation",
        "windows_timezone",
        "car_model_make",
        "film_director",
        "book_author",
        "domain_university",
        "chess_opening",
        "icd10_condition",
        "restriction_site",
        "brand_generic",
        "pylint_code",
    }
)
TRAILING = 0.05  # a lookup more than this below prompting is named (issue 22's target)
NAMED = 8  # the held-out tasks a model has no run of are named up to this many (a set aside, not a model never run)


@dataclass(frozen=True)
class Measured:
    model: str
    task: str
    few_shot: float
    auto: float


def held_out_sets(root: Path = UNSEEN_DIR.parent) -> dict[str, str]:
    """Each held-out task's set (the folder it is in), in the order the sets were made."""

    def number(folder: Path) -> int:
        found = re.fullmatch(r"unseen(?:_(\d+))?", folder.name)
        return int(found.group(1) or 1) if found else 0

    sets = sorted((f for f in root.iterdir() if f.is_dir() and number(f)), key=number)
    return {task: folder.name for folder in sets for task in available_tasks(folder)}


def auto_exact(task: dict[str, Any]) -> float | None:
    """`auto`'s test exact match as its rule chooses now, or None where the run cannot say."""
    runs = task["methods"]
    if set(auto_candidates()) <= set(runs):
        derived = auto_from_candidates(runs)
        return None if "error" in derived else float(derived["steered"]["exact"])
    own = runs.get("auto", {})
    if "error" not in own and "steered" in own and set(auto_candidates()) <= chose_among(own):
        return float(own["steered"]["exact"])
    return None


def measured(results: Iterable[dict[str, Any]]) -> list[Measured]:
    """One measurement per model and task: the run with the most test items, then the latest, that says `auto`."""
    best: dict[tuple[str, str], tuple[Any, Measured]] = {}
    for result in results:
        if EvalConfig(**result["config"]).n_demos != DEMONSTRATIONS:
            continue
        for name, task in result["tasks"].items():
            auto = auto_exact(task)
            if auto is None:
                continue
            _, rank = run_key(result, name, task)
            found = Measured(result["meta"]["model"], name, task["conditions"]["few_shot"]["exact"], auto)
            key = (found.model, name)
            if key not in best or rank > best[key][0]:
                best[key] = (rank, found)
    return [found for _, found in best.values()]


def _row(label: str, group: list[Measured]) -> str:
    if not group:
        return f"| {label} | 0 | | | |"
    few = 100 * sum(m.few_shot for m in group) / len(group)
    auto = 100 * sum(m.auto for m in group) / len(group)
    return f"| {label} | {len(group)} | {few:.1f} | {auto:.1f} | {auto - few:+.2f} |"


def report(found: list[Measured], sets: dict[str, str]) -> str:
    lines: list[str] = []
    for model in sorted({m.model for m in found}):
        mine = {m.task: m for m in found if m.model == model}
        held_out = [mine[t] for t in sets if t in mine]
        outside = [mine[t] for t in OUTSIDE_THE_SUITE if t in mine]
        lookups = [m for m in held_out if m.task in LOOKUPS]
        lines += [f"### {model}", "", "| tasks | n | 10-shot | auto | auto - 10-shot |", "|---|---|---|---|---|"]
        for folder in dict.fromkeys(sets.values()):
            lines.append(_row(folder, [mine[t] for t, f in sets.items() if f == folder and t in mine]))
        lines.append(_row("**every held-out set**", held_out))
        lines.append(_row("the packaged tasks outside the suite", outside))
        lines.append(_row("**every task nobody tuned on**", held_out + outside))
        lines.append(_row("the knowledge lookups of the held-out sets", lookups))
        lines.append(_row("the development suite (tuned on)", [mine[t] for t in DEFAULT_TASKS if t in mine]))
        missing = [t for t in sets if t not in mine]
        trailing = [f"{m.task} {100 * (m.auto - m.few_shot):+.1f}" for m in lookups if m.auto < m.few_shot - TRAILING]
        named = f" ({', '.join(missing)})" if 0 < len(missing) <= NAMED else ""
        lines += ["", f"- held-out tasks without a run that says `auto`: {len(missing)}{named}"]
        lines += [f"- lookups more than 5 points below prompting: {', '.join(trailing) or 'none'}", ""]
    return "\n".join(lines)


def main() -> None:
    run_cli(__doc__ or "", lambda results: report(measured(results), held_out_sets()))


if __name__ == "__main__":
    main()
