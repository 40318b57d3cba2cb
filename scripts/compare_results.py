"""Two `steer eval` runs side by side: exact match and first-token accuracy per task and condition.

python -m scripts.compare_results docs/results/v1/results.json docs/results/results.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from steering.eval.scoring import condition_label, condition_scores


def _cell(task: dict[str, Any] | None, condition: str, metric: str) -> str:
    scores = condition_scores(task, condition) if task is not None else None
    return "–" if not scores else f"{100 * scores[metric]:.0f}"


def side_by_side(old: dict[str, Any], new: dict[str, Any], metric: str) -> list[str]:
    conditions = ["zero_shot", "few_shot", *dict.fromkeys([*old["config"]["methods"], *new["config"]["methods"]])]
    k = new["config"]["k_shot"]
    header = ["task", *(condition_label(c, k) for c in conditions)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in new["tasks"]:
        cells = [
            f"{_cell(old['tasks'].get(name), c, metric)} → {_cell(new['tasks'][name], c, metric)}" for c in conditions
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    means = []
    for c in conditions:
        pair = [run["summary"][metric].get(c) for run in (old, new)]
        means.append(" → ".join("–" if v is None else f"{100 * v:.1f}" for v in pair))
    lines.append("| **mean** | " + " | ".join(f"**{m}**" for m in means) + " |")
    return lines


def main(argv: list[str]) -> None:
    old, new = (json.loads(Path(p).read_text(encoding="utf-8")) for p in argv[:2])
    for metric, title in (("exact", "Exact match"), ("first_token", "First-token accuracy")):
        print(f"### {title} (%), before → after\n")
        print("\n".join(side_by_side(old, new, metric)) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
