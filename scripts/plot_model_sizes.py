"""How exact match moves with model size: `steer eval` results of several models on the same tasks, plotted as
10-shot prompting and each method against the model's parameter count (read off its name), means over the tasks
every model has. Prints the table it plots.

    python -m scripts.plot_model_sizes docs/results/issue22/round6/*/results.json \
        --tasks country_capital,language_name,us_city_state --methods soft_injection,context_tuning \
        --out docs/results/issue22/round6/model_sizes.png
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from steering.eval.plots import pyplot
from steering.eval.scoring import condition_scores

SIZE = re.compile(r"(\d+(?:\.\d+)?)([MB])\b", re.IGNORECASE)
FEW_SHOT = "10-shot"


def parameters(model: str) -> float:
    """Parameters in millions, from a name such as `SmolLM2-135M-Instruct` or `Qwen2.5-Coder-1.5B-Instruct`."""
    found = SIZE.search(model)
    if found is None:
        raise SystemExit(f"no size in the model's name {model!r}")
    return float(found.group(1)) * (1000.0 if found.group(2).upper() == "B" else 1.0)


def scores(results: list[dict[str, Any]], tasks: list[str], methods: list[str]) -> dict[str, dict[str, list[float]]]:
    """model -> condition -> exact match on each of `tasks` (every model must have them all)."""
    found: dict[str, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for result in results:
        model = result["meta"]["model"]
        for name, task in result["tasks"].items():
            if name not in tasks:
                continue
            for condition, label in [("few_shot", FEW_SHOT), *zip(methods, methods, strict=True)]:
                scored = condition_scores(task, condition)
                if scored is not None:
                    found[model][label][name] = scored["exact"]
    table: dict[str, dict[str, list[float]]] = {}
    for model, by_condition in found.items():
        table[model] = {}
        for condition in [FEW_SHOT, *methods]:
            missing = [t for t in tasks if t not in by_condition.get(condition, {})]
            if missing:
                raise SystemExit(f"{model}: no {condition} result for {', '.join(missing)}")
            table[model][condition] = [by_condition[condition][t] for t in tasks]
    return table


def plot(table: dict[str, dict[str, list[float]]], path: Path) -> None:
    plt = pyplot()
    models = sorted(table, key=parameters)
    xs = [parameters(m) for m in models]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for condition in table[models[0]]:
        ys = [100 * sum(table[m][condition]) / len(table[m][condition]) for m in models]
        style = {"color": "black", "ls": "--"} if condition == FEW_SHOT else {}
        ax.plot(xs, ys, marker="o", lw=2, label=condition, **style)
    ax.set_xscale("log")
    ax.set_xticks(xs, [m.split("-Instruct")[0] for m in models], fontsize=8)
    ax.minorticks_off()
    ax.set_ylabel("exact match, % (mean over the tasks)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="results.json files (several models, the same tasks)")
    parser.add_argument("--tasks", required=True, help="comma-separated tasks every model has")
    parser.add_argument("--methods", required=True, help="comma-separated methods to plot beside 10-shot")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args()
    tasks, methods = args.tasks.split(","), args.methods.split(",")
    table = scores([json.loads(p.read_text(encoding="utf-8")) for p in args.results], tasks, methods)
    for model in sorted(table, key=parameters):
        row = "  ".join(f"{c} {100 * sum(v) / len(v):5.1f}" for c, v in table[model].items())
        print(f"{model:32s} {row}")
    plot(table, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
