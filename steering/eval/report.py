"""The suite's outputs: Markdown tables and the files of a run (results.json, results.md and the plots)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from steering.eval.plots import plot_per_task, plot_sweep
from steering.eval.scoring import condition_label, condition_scores


def _pct(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}"


def accuracy_table(result: dict[str, Any], metric: str) -> list[str]:
    config = result["config"]
    conditions = ["zero_shot", "few_shot", *config["methods"]]
    header = ["task", *(condition_label(c, config["k_shot"]) for c in conditions)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, task in result["tasks"].items():
        cells = [_pct(s[metric]) if (s := condition_scores(task, c)) else "failed" for c in conditions]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    means = [_pct(result["summary"][metric][c], 1) for c in conditions]
    lines.append("| **mean** | " + " | ".join(f"**{m}**" for m in means) + " |")
    return lines


def settings_table(result: dict[str, Any]) -> list[str]:
    methods = result["config"]["methods"]
    lines = ["| task | " + " | ".join(methods) + " |", "|" + "---|" * (len(methods) + 1)]
    for name, task in result["tasks"].items():
        cells = []
        for method in methods:
            run = task["methods"].get(method, {})
            if "error" in run:
                cells.append("failed")
                continue
            layers = run["layers"]
            where = "layer " + ",".join(map(str, layers)) if len(layers) <= 3 else f"{len(layers)} layers"
            cells.append(f"{where}, s={run['strength']:g}, {run['compute_seconds']:.0f} s")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def sweep_table(result: dict[str, Any]) -> list[str]:
    multiples = sorted(result["config"]["multiples"])
    lines = ["| method | " + " | ".join(f"×{m:g}" for m in multiples) + " |", "|" + "---|" * (len(multiples) + 1)]
    for method, points in result["summary"]["sweep"].items():
        cells = [f"{_pct(p['first_token'], 1)} / {_pct(p['exact'], 1)}" for p in points]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def verdict_table(result: dict[str, Any]) -> list[str]:
    """Per task, the verdict on the last method evaluated (auto when it is): rating and summary."""
    if not result["config"]["methods"]:
        return ["No steering method was evaluated."]
    method = result["config"]["methods"][-1]
    lines = [f"| task | {method}: verdict on its held-out demonstrations |", "|---|---|"]
    for name, task in result["tasks"].items():
        found = task["methods"].get(method, {}).get("verdict")
        cell = f"**{found['rating'].replace('_', ' ')}**: {found['summary']}" if found else "–"
        lines.append(f"| {name} | {cell} |")
    return lines


def errors_list(result: dict[str, Any]) -> list[str]:
    return [
        f"- {name} · {method}: {run['error']}"
        for name, task in result["tasks"].items()
        for method, run in task["methods"].items()
        if "error" in run
    ]


def markdown(result: dict[str, Any]) -> str:
    config, meta = result["config"], result["meta"]
    lines = [
        f"# Steering evaluation: {meta.get('model')}",
        "",
        f"{len(result['tasks'])} tasks; {config['n_demos']} demonstrations and {config['n_test']} disjoint test "
        f"items per task (seed {config['seed']}); backend {meta.get('backend')}; {meta.get('seconds')} s.",
        "",
        "Accuracy in % on the test items. Definitions:",
        "",
        *(f"- **{k}**: {v}" for k, v in result["definitions"].items()),
        "",
        "## First-token accuracy",
        "",
        *accuracy_table(result, "first_token"),
        "",
        "## Exact-match accuracy",
        "",
        *accuracy_table(result, "exact"),
        "",
        "## Strength sweep (mean over tasks, first-token / exact, in %)",
        "",
        *sweep_table(result),
        "",
        "## Chosen settings (injection layers, strength s, time to compute the vector)",
        "",
        *settings_table(result),
        "",
        "## Verdicts",
        "",
        *verdict_table(result),
        "",
    ]
    errors = errors_list(result)
    if errors:
        lines += ["## Failures", "", *errors, ""]
    return "\n".join(lines)


def markdown_summary(result: dict[str, Any]) -> str:
    return "\n".join(["first-token accuracy (%):", *accuracy_table(result, "first_token")])


def write_outputs(result: dict[str, Any], out: str | Path) -> list[Path]:
    """results.json, results.md, per_task.png and (when a method was evaluated) sweep.png in `out` (created);
    returns the paths."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "results.json", folder / "results.md", folder / "per_task.png"]
    paths[0].write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    paths[1].write_text(markdown(result), encoding="utf-8")
    plot_per_task(result, paths[2])
    if result["config"]["methods"]:
        paths.append(folder / "sweep.png")
        plot_sweep(result, paths[3])
    return paths
