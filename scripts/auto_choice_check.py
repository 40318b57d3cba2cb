"""How `auto`'s rules would have done on items they never saw: for each task and model whose saved `steer eval` run
has `auto` and every candidate it ran (`auto` and its candidates use the same held-out demonstrations, so their
held-out scores are the ones `auto` compared), the test items' exact match of the candidate each rule keeps, less
10-shot prompting's: the highest held-out score, `auto.choose` as it is, and context tuning always. It also counts
the tasks where context tuning's held-out score settles the choice (`auto.settled`: the others need not run) and
the compute time that saves, from each candidate's own run.

    python -m scripts.auto_choice_check $(find docs/results/issue22 -name results.json | sort)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from scripts.verdict_calibration import run_cli, run_key
from steering.methods.auto import PREFERRED, choose, rank_key, settled

Rule = Callable[[Mapping[str, Mapping[str, Any]]], str]
RULES: dict[str, Rule] = {
    "the highest held-out score": lambda metrics: max(metrics, key=lambda m: rank_key(metrics[m])),
    "auto.choose": lambda metrics: choose(metrics)[0],
    "context tuning always": lambda metrics: PREFERRED if PREFERRED in metrics else choose(metrics)[0],
}


def cases(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One case per model, task and number of demonstrations (`verdict_calibration.run_key` picks the run): each
    candidate's held-out metrics, test exact match and compute seconds, and 10-shot prompting's test exact match."""
    best: dict[tuple[str, str, Any], tuple[Any, dict[str, Any]]] = {}
    for result in results:
        for name, task in result["tasks"].items():
            report = task["methods"].get("auto", {}).get("dev_metrics", {}).get("auto")
            if not isinstance(report, dict):
                continue
            # A candidate `auto` skipped still ran in `steer eval` (as its own column): its run is there to replay.
            names = [c["method"] for c in report["candidates"] if c.get("dev_exact") is not None or "skipped" in c]
            runs = {m: task["methods"].get(m, {}) for m in names}
            if not names or not all("steered" in run and "compute_seconds" in run for run in runs.values()):
                continue
            case = {
                "metrics": {m: run["dev_metrics"] for m, run in runs.items()},
                "test": {m: run["steered"]["exact"] for m, run in runs.items()},
                "seconds": {m: run["compute_seconds"] for m, run in runs.items()},
                "few_shot": task["conditions"]["few_shot"]["exact"],
            }
            key, rank = run_key(result, name, task)
            if key not in best or rank > best[key][0]:
                best[key] = (rank, case)
    return [case for _, case in best.values()]


def report(found: list[dict[str, Any]]) -> str:
    lines = [f"- task-model pairs: {len(found)}"]
    for label, rule in RULES.items():
        gaps = [case["test"][rule(case["metrics"])] - case["few_shot"] for case in found]
        lines.append(
            f"- {label}: {100 * sum(gaps) / max(len(gaps), 1):+.2f} points over 10-shot prompting (test items)"
        )
    with_preferred = [case for case in found if PREFERRED in case["metrics"]]
    sure = [case for case in with_preferred if settled(case["metrics"][PREFERRED]) is not None]
    total = sum(sum(case["seconds"].values()) for case in with_preferred)
    saved = sum(sum(case["seconds"].values()) - case["seconds"][PREFERRED] for case in sure)
    share = f"{100 * saved / total:.0f} %" if total else "-"
    lines.append(
        f"- settled by context tuning's held-out score: {len(sure)} of {len(with_preferred)}; the others' compute "
        f"time skipped: {saved:.0f} s of {total:.0f} s ({share})"
    )
    return "\n".join(lines)


def main() -> None:
    run_cli(__doc__ or "", lambda results: report(cases(results)))


if __name__ == "__main__":
    main()
