"""The suite's plots: accuracy against strength, and accuracy per task (matplotlib, imported when drawing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from steering.eval.scoring import condition_label, condition_scores

METRIC_LABELS = {"first_token": "first-token accuracy", "exact": "exact-match accuracy"}


def pyplot():
    """matplotlib.pyplot on a backend without a screen, imported only when drawing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_sweep(result: dict[str, Any], path: Path) -> None:
    """Accuracy vs strength multiple: one panel per (metric, method), a thin line per task, the mean thick."""
    plt = pyplot()
    methods = result["config"]["methods"]
    fig, axes = plt.subplots(2, len(methods), figsize=(3.6 * len(methods) + 1.8, 6.4), squeeze=False, sharey=True)
    colours = plt.get_cmap("tab10")
    for col, method in enumerate(methods):
        for row, metric in enumerate(("first_token", "exact")):
            ax = axes[row][col]
            for i, (name, task) in enumerate(result["tasks"].items()):
                points = task["methods"].get(method, {}).get("sweep")
                if points:
                    xs, ys = [p["multiple"] for p in points], [100 * p[metric] for p in points]
                    ax.plot(xs, ys, marker=".", lw=1.2, alpha=0.75, color=colours(i % 10), label=name)
            mean = [p for p in result["summary"]["sweep"][method] if p[metric] is not None]
            if mean:
                xs, ys = [p["multiple"] for p in mean], [100 * p[metric] for p in mean]
                ax.plot(xs, ys, marker="o", lw=3, color="black", label="mean")
            ax.set_title(f"{method}" if row == 0 else "", fontsize=11)
            ax.set_ylim(-3, 103)
            ax.grid(alpha=0.3)
            ticks = sorted(result["config"]["multiples"])
            ax.set_xticks(ticks, [f"{m:g}" for m in ticks])
            ax.tick_params(labelsize=8)
            if col == 0:
                ax.set_ylabel(f"{METRIC_LABELS[metric]} (%)")
            if row == 1:
                ax.set_xlabel("× chosen strength")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=9, frameon=False)
    fig.suptitle(f"Accuracy vs steering strength — {result['meta'].get('model')}", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1 - 1.6 / fig.get_figwidth(), 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_per_task(result: dict[str, Any], path: Path) -> None:
    """Grouped bars: for each task (and the mean), zero-shot, k-shot and every method."""
    plt = pyplot()
    config = result["config"]
    conditions = ["zero_shot", "few_shot", *config["methods"]]
    names = [*result["tasks"], "mean"]
    width = 0.8 / len(conditions)
    fig, axes = plt.subplots(2, 1, figsize=(max(10.0, 1.25 * len(names) + 2.5), 8), sharex=True)
    colours = plt.get_cmap("tab10")
    for ax, metric in zip(axes, ("first_token", "exact"), strict=True):
        for j, cond in enumerate(conditions):
            values = [_bar_value(result, name, cond, metric) for name in names]
            xs = [i + (j - (len(conditions) - 1) / 2) * width for i in range(len(names))]
            bars = ax.bar(xs, values, width=width, color=colours(j % 10), label=condition_label(cond, config["k_shot"]))
            labels = [f"{v:.0f}" for v in values]
            ax.bar_label(bars, labels=labels, fontsize=6.5, rotation=90, padding=1.5, color="#333333")
        ax.set_ylabel(f"{METRIC_LABELS[metric]} (%)")
        ax.set_ylim(0, 112)
        ax.set_yticks(range(0, 101, 20))
        ax.grid(axis="y", alpha=0.3)
        ax.axvline(len(names) - 1.5, color="grey", lw=0.8, ls="--")
    axes[1].set_xticks(range(len(names)))
    axes[1].set_xticklabels(names, rotation=20, ha="right")
    axes[0].legend(ncol=len(conditions), loc="upper center", bbox_to_anchor=(0.5, 1.22), frameon=False)
    fig.suptitle(f"Accuracy per task — {result['meta'].get('model')}, {config['n_test']} test items per task", y=0.99)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _bar_value(result: dict[str, Any], task: str, condition: str, metric: str) -> float:
    if task == "mean":
        value = result["summary"][metric].get(condition)
    else:
        scores = condition_scores(result["tasks"][task], condition)
        value = scores[metric] if scores else None
    return 0.0 if value is None else 100 * value
