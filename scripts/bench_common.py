"""Shared pieces of the benchmark: metrics with targets, interleaved timing, statistics, machine facts."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Op = Literal["<=", ">="]


@dataclass
class Metric:
    """One figure of the report; with `op` and `threshold` it is a target that passes or misses."""

    key: str
    label: str
    value: float | None
    unit: str
    op: Op | None = None
    threshold: float | None = None
    note: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None

    @property
    def target(self) -> str:
        return f"{self.op} {self.threshold:g}" if self.op is not None and self.threshold is not None else ""

    @property
    def status(self) -> str:
        if self.skipped is not None or self.value is None:
            return "SKIP"
        if self.op is None or self.threshold is None:
            return ""
        ok = self.value <= self.threshold if self.op == "<=" else self.value >= self.threshold
        return "PASS" if ok else "MISS"

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "value": self.value,
            "unit": self.unit,
            "target": self.target or None,
            "status": self.status or None,
            "note": self.note,
            "skipped": self.skipped,
            "detail": self.detail,
        }


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation between order statistics."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def paired_ratios(numerator: Sequence[float], denominator: Sequence[float]) -> list[float]:
    """Per-repetition ratios of two interleaved series: neighbours in time share the machine's load."""
    return [n / d for n, d in zip(numerator, denominator, strict=True) if d > 0]


def interleaved(
    runs: Mapping[str, Callable[[], float]], reps: int, warmup: int = 1, on_rep: Callable[[int], None] | None = None
) -> dict[str, list[float]]:
    """Run every measurement once per repetition, A B C A B C ..., rotating the order each repetition.

    Each callable returns one measured value; the first `warmup` rounds are thrown away.
    """
    names = list(runs)
    out: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(warmup + reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            value = runs[name]()
            if rep >= warmup:
                out[name].append(value)
        if on_rep is not None and rep >= warmup:
            on_rep(rep - warmup)
    return out


def timed(fn: Callable[[], object]) -> float:
    """Wall seconds of `fn`, the GPU's queued work included (CUDA runs asynchronously: unsynchronized, the time
    would stop before the device's does)."""
    started = time.perf_counter()
    fn()
    torch = sys.modules.get("torch")  # never imported here: CPU-only benchmarks of the HTTP server stay light
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter() - started


def load_average() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3


class LoadSampler:
    """Samples the 1-minute load average in the background while the benchmark runs."""

    def __init__(self, every_s: float = 5.0) -> None:
        self.every_s = every_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load-sampler", daemon=True)

    def _run(self) -> None:
        while True:
            self.samples.append(load_average()[0])
            if self._stop.wait(self.every_s):
                return

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float]:
        values = self.samples or [load_average()[0]]
        return {
            "load1_min": round(min(values), 2),
            "load1_mean": round(statistics.fmean(values), 2),
            "load1_max": round(max(values), 2),
        }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_facts() -> dict[str, Any]:
    import torch
    import transformers

    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }
