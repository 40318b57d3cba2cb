"""Smoke test of `make bench-load`: the quick run on the tiny model writes every figure and the plots (no timing
assertions: the tiny model says nothing about speed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETED = [
    "long_load.continuous_ratio",
    "saturation.throughput_ratio",
    "training.p50_ratio",
    "decode.task_vector_rows1",
    "decode.icv_rows1",
]


def test_quick_bench_load_writes_every_figure_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run(
        [sys.executable, "-m", "scripts.bench_load", "--quick", "--model", "tiny:llama", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(out.read_text())
    metrics = report["metrics"]
    for key in TARGETED:
        assert metrics[key]["target"] and metrics[key]["status"] in ("PASS", "MISS"), key
    schedulers = {(p["scheduler"], p["rate"]) for p in report["open_loop"]}
    rates = report["meta"]["plan"]["rates"]
    assert {(s, r) for s in ("continuous", "static") for r in rates} <= schedulers
    assert any(s == "reference" for s, _ in schedulers)
    for phase in report["open_loop"]:
        assert phase["failed"] == 0 and phase["tokens"] > 0, phase["scheduler"]
    for name in ("latency", "ttft", "throughput"):
        assert (tmp_path / f"load_{name}.png").stat().st_size > 0
    assert "throughput at saturation" in proc.stdout
