"""Smoke tests of `make bench` and `make bench-load`: each quick run on the tiny model writes every metric (and
the load plots); no timing assertions, the tiny model says nothing about speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

EXPECTED = [
    "compute.task_vector_s",
    "compute.function_vector_s",
    "compute.icv_s",
    "compute.contrastive_s",
    "compute.context_tuning_s",
    "http.register_known_p50_ms",
    "http.batching_throughput_ratio",
    "http.overhead_ratio",
    "decode.unsteered_ms_per_token",
    "decode.task_vector_ratio",
    "decode.function_vector_ratio",
    "decode.icv_all_layers_ratio",
    "decode.contrastive_ratio",
    "decode.context_tuning_ratio",
    "icl.first_token_ratio",
    "icl.full_answer_ratio",
    "peers.loop_unsteered_ms_per_token",
    "peers.engine_vs_loop_unsteered_ratio",
    "peers.raw_hook_ratio",
    "peers.steering_vectors_ratio",
    "peers.repeng_ratio",
    "peers.engine_add_all_ratio",
]
TARGETED = [
    "http.register_known_p50_ms",
    "http.batching_throughput_ratio",
    "http.overhead_ratio",
    "decode.task_vector_ratio",
    "decode.function_vector_ratio",
    "decode.icv_all_layers_ratio",
    "icl.first_token_ratio",
    "icl.full_answer_ratio",
]
LOAD_TARGETED = [
    "long_load.continuous_ratio",
    "saturation.throughput_ratio",
    "training.p50_ratio",
    "decode.task_vector_rows1",
    "decode.icv_rows1",
]


def run_quick(module: str, out: Path, timeout_s: float, targeted: list[str]) -> tuple[str, dict[str, Any]]:
    """`python -m <module> --quick` on the tiny model: its stdout and report, each targeted metric judged."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run(
        [sys.executable, "-m", module, "--quick", "--model", "tiny:llama", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(out.read_text())
    metrics = report["metrics"]
    for key in targeted:
        assert metrics[key]["target"] and metrics[key]["status"] in ("PASS", "MISS"), key
    return proc.stdout, report


def test_quick_bench_writes_every_metric(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    stdout, report = run_quick("scripts.bench", out, 600, TARGETED)
    metrics = report["metrics"]
    soft = ["compute.soft_injection_s", "decode.soft_injection_ratio", "decode.soft_injection_answer_ratio"]
    expected = EXPECTED + (soft if _has_soft() else [])
    missing = [k for k in expected if k not in metrics]
    assert not missing, f"missing metrics: {missing}"
    for key in expected:
        m = metrics[key]
        if m["skipped"] is None:
            assert isinstance(m["value"], (int, float)), key
        else:  # only the optional peer libraries may be skipped, and they must say why
            assert key in ("peers.steering_vectors_ratio", "peers.repeng_ratio") and m["skipped"], key
    meta = report["meta"]
    assert meta["quick"] is True and meta["model"].startswith("tiny")
    assert {"nproc", "cpu_model", "torch"} <= set(meta["machine"])
    assert "load1_mean" in meta and meta["duration_s"] > 0
    assert out.with_suffix(".txt").read_text().strip()  # the table's copy
    assert "result" in stdout  # the table went to stdout


def _has_soft() -> bool:
    return (ROOT / "steering" / "methods" / "soft_injection.py").exists()


def test_quick_bench_load_writes_every_figure_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    stdout, report = run_quick("scripts.bench_load", out, 300, LOAD_TARGETED)
    schedulers = {(p["scheduler"], p["rate"]) for p in report["open_loop"]}
    rates = report["meta"]["plan"]["rates"]
    assert {(s, r) for s in ("continuous", "static") for r in rates} <= schedulers
    assert any(s == "reference" for s, _ in schedulers)
    for phase in report["open_loop"]:
        assert phase["failed"] == 0 and phase["tokens"] > 0, phase["scheduler"]
    for name in ("latency", "ttft", "throughput"):
        assert (tmp_path / f"load_{name}.png").stat().st_size > 0
    assert "throughput at saturation" in stdout
