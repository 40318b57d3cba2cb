"""Plots of `make bench-load`: latency, time to first token and throughput against the arrival rate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

STYLES = {
    "continuous": {"color": "tab:blue", "marker": "o"},
    "static": {"color": "tab:orange", "marker": "s"},
    "reference": {"color": "tab:gray", "marker": "^", "linestyle": "--"},
}
LABELS = {
    "continuous": "continuous batching (steered)",
    "static": "static batches (steered)",
    "reference": "transformers generate, one at a time (unsteered)",
}


def _series(phases: list[dict[str, Any]], scheduler: str, key: str) -> tuple[list[float], list[float]]:
    points = sorted((p["rate"], p[key]) for p in phases if p["scheduler"] == scheduler and p.get(key) is not None)
    return [x for x, _ in points], [y for _, y in points]


def plot_load(phases: list[dict[str, Any]], out_dir: Path, title: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    panels = [
        ("latency", [("latency_p50_s", "p50", "-"), ("latency_p99_s", "p99", ":")], "latency (s)", True),
        ("ttft", [("ttft_p50_s", "p50", "-"), ("ttft_p99_s", "p99", ":")], "time to first token (s)", True),
        ("throughput", [("throughput_tok_s", "", "-")], "completion tokens per second", False),
    ]
    for name, keys, ylabel, log in panels:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for scheduler, style in STYLES.items():
            for key, suffix, line in keys:
                xs, ys = _series(phases, scheduler, key)
                if xs:
                    label = f"{LABELS[scheduler]} {suffix}".strip()
                    ax.plot(xs, ys, label=label, **{"linestyle": line, **style})
        ax.set_xlabel("arrival rate (requests per second, Poisson)")
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        path = out_dir / f"load_{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
