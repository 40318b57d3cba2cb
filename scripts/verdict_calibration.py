"""How far `auto`'s verdicts hold on items they never saw: each verdict compares the chosen vector with 10-shot
prompting on the task's held-out demonstrations and gives the gap a 95 % margin (`steering.tasks.verdict`); `steer
eval` then measures the same two on disjoint test items. For each task and model (the run with the most test items,
then the latest), this prints the held-out gap, its margin and the test gap, and counts how often the margin's
interval holds the test gap and how often the verdict's side of prompting is the test items' side. The test gap has
its own sampling error (a few points to about ten on 40-100 items), so the counts are a lower bound on how often
the margin holds the true gap.

    python -m scripts.verdict_calibration docs/results/issue22/round*/*/results.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steering.eval.scoring import condition_scores


@dataclass(frozen=True)
class Pair:
    model: str
    task: str
    rating: str
    dev_gap: float  # chosen vector minus 10-shot, exact match on the held-out demonstrations
    margin: float
    test_gap: float  # the same on the test items
    test_items: int

    @property
    def covered(self) -> bool:
        return abs(self.test_gap - self.dev_gap) <= self.margin + 1e-9

    @property
    def firm(self) -> bool:
        """The held-out gap is past its margin: the verdict says a side without saying it may be chance."""
        return abs(self.dev_gap) > self.margin


def run_key(result: dict[str, Any], name: str, task: dict[str, Any]) -> tuple[tuple[str, str, Any], tuple[int, str]]:
    """Which pair a task's run belongs to (model, task, demonstrations posted: tasks of one name in two sets are one
    task) and how it ranks among that pair's runs (the most test items, then the latest)."""
    demonstrations = result.get("config", {}).get("n_demos")
    key = (result["meta"]["model"], name, demonstrations)
    return key, (len(task["answers"]), result["meta"].get("started", ""))


def pairs(results: list[dict[str, Any]]) -> list[Pair]:
    """One pair per model, task and number of demonstrations (`run_key`); tasks whose `auto` recorded no
    exact-match verdict on held-out demonstrations are left out."""
    best: dict[tuple[str, str, Any], tuple[tuple[int, str], Pair]] = {}
    for result in results:
        model = result["meta"]["model"]
        for name, task in result["tasks"].items():
            verdict = task["methods"].get("auto", {}).get("verdict")
            steered, few = condition_scores(task, "auto"), condition_scores(task, "few_shot")
            if not verdict or verdict.get("metric") != "exact" or verdict.get("margin") is None or not steered:
                continue
            items = len(task["answers"])
            pair = Pair(
                model,
                name,
                verdict["rating"],
                verdict["steered"] - verdict["few_shot"],
                verdict["margin"],
                steered["exact"] - few["exact"],
                items,
            )
            key, rank = run_key(result, name, task)
            if key not in best or rank > best[key][0]:
                best[key] = (rank, pair)
    return sorted((p for _, p in best.values()), key=lambda p: (p.model, p.task))


def _pct(value: float) -> str:
    return f"{100 * value:+.1f}"


def report(found: list[Pair]) -> str:
    lines = [
        "| model | task | verdict | held-out gap | 95 % margin | test gap (items) | interval holds it |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in found:
        lines.append(
            f"| {p.model} | {p.task} | {p.rating} | {_pct(p.dev_gap)} | ±{100 * p.margin:.0f} | "
            f"{_pct(p.test_gap)} ({p.test_items}) | {'yes' if p.covered else '**no**'} |"
        )
    total = len(found)
    covered = sum(p.covered for p in found)
    lines += ["", f"- pairs: {total}; the held-out interval holds the test gap on {covered} ({_share(covered, total)})"]
    for rating, side in (("better_than_few_shot", 1), ("below_few_shot", -1)):
        said = [p for p in found if p.rating == rating]
        same = [p for p in said if p.test_gap * side > 0]
        firm = [p for p in said if p.firm]
        lines.append(
            f"- {rating}: {len(said)}; the test items on the same side of prompting: {len(same)} "
            f"({_share(len(same), len(said))}); past the margin on the held-out answers: {len(firm)}, of which on the "
            f"same side on the test items: {sum(p.test_gap * side > 0 for p in firm)}"
        )
    for rating in ("as_good_as_few_shot", "no_effect"):
        said = [p for p in found if p.rating == rating]
        lines.append(f"- {rating}: {len(said)}; the test gap within the margin: {sum(p.covered for p in said)}")
    return "\n".join(lines)


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f} %" if whole else "-"


def run_cli(doc: str, report_of: Callable[[list[dict[str, Any]]], str]) -> None:
    """A script over saved `steer eval` runs: parse the results.json paths, print `report_of` their contents."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("results", nargs="+", type=Path, help="steer eval results.json files")
    args = parser.parse_args()
    print(report_of([json.loads(path.read_text()) for path in args.results]))


def main() -> None:
    run_cli(__doc__ or "", lambda results: report(pairs(results)))


if __name__ == "__main__":
    main()
