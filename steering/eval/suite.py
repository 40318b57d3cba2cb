"""The suite: every task of a configuration, zero-shot, k-shot and each method with its strength sweep."""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any

from steering.eval.backends import Backend, Steer
from steering.eval.config import EvalConfig, reproduce_command
from steering.eval.progress import NullReporter, Reporter
from steering.eval.scoring import DEFINITIONS, Probe, build_probe, score, summarise
from steering.eval.task_source import load_eval_task
from steering.methods.auto import PREFERRED, candidate_scores, choose, run_order, settled
from steering.methods.registry import auto_candidates
from steering.tasks.datasets import split_task
from steering.tasks.verdict import verdict
from steering.wire.protocol import Demonstration

AUTO = "auto"


def evaluate_method(
    backend: Backend,
    task: str,
    method: str,
    demos: list[Demonstration],
    probe: Probe,
    zero_shot: dict[str, Any],
    config: EvalConfig,
    reporter: Reporter,
) -> dict[str, Any]:
    prefix = f"{task} · {method}"
    reporter.status(f"{prefix}: computing")
    prepared = backend.prepare(
        f"eval-{task}-{method}",  # a task name holds no ":"
        demos,
        method,
        config.method_options(method),
        lambda stage: reporter.status(f"{prefix}: {stage}"),
    )
    reporter.status(f"{prefix}: scoring")
    sweep = []
    steered: dict[str, Any] = {}
    for multiple in sorted({*config.multiples, 1.0}):
        strength = prepared.strength * multiple
        if multiple == 0.0:  # no steering at all: exactly the zero-shot run, no need to generate it again
            scores = zero_shot
        else:
            scores = score(backend, probe.queries, probe, Steer(prepared.handle, strength), config, multiple == 1.0)
        if multiple == 1.0:
            steered = scores
        if multiple in config.multiples:
            sweep.append({"multiple": multiple, "strength": strength, **_without_outputs(scores)})
    return {
        "vector_method": prepared.method,
        "layers": prepared.layers,
        "strength": prepared.strength,
        "compute_seconds": round(prepared.compute_seconds, 3),
        "dev_metrics": prepared.dev_metrics,
        "steered": steered,
        "sweep": sweep,
    }


def _without_outputs(scores: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in scores.items() if k != "outputs"}


def evaluate_task(backend: Backend, task: str, config: EvalConfig, reporter: Reporter) -> dict[str, Any]:
    started = time.perf_counter()
    demos, test = split_task(load_eval_task(task, config.tasks_dir), config.n_demos, config.n_test, config.seed)
    probe = build_probe(demos, test, config.k_shot, config.seed)
    result: dict[str, Any] = {
        "inputs": [d.input for d in test],
        "answers": probe.answers,
        "answer_end": probe.answer_end.model_dump(),
        "conditions": {},
    }
    reporter.status(f"{task}: zero-shot")
    result["conditions"]["zero_shot"] = score(backend, probe.queries, probe, None, config, keep=True)
    reporter.advance()
    reporter.status(f"{task}: {config.k_shot}-shot")
    result["conditions"]["few_shot"] = score(backend, probe.few_shot, probe, None, config, keep=True)
    reporter.advance()
    result["methods"] = {}
    for method in config.methods:
        if method == AUTO and derives_auto(config):
            reporter.advance()  # read off the candidates below
            continue
        try:
            result["methods"][method] = evaluate_method(
                backend, task, method, demos, probe, result["conditions"]["zero_shot"], config, reporter
            )
        except Exception as exc:  # one failing method must not lose the others' results
            result["methods"][method] = {"error": f"{type(exc).__name__}: {exc}"}
        reporter.advance()
    if derives_auto(config):
        result["methods"][AUTO] = auto_from_candidates(result["methods"])
    for run in result["methods"].values():
        if "error" not in run:
            found = verdict(run["vector_method"], run["dev_metrics"])
            run["verdict"] = found.model_dump() if found is not None else None
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def derives_auto(config: EvalConfig) -> bool:
    """`auto` is read off its candidates' own runs when they are all evaluated: it would run the very same
    computations (same options, seed and held-out split) and keep what `auto.choose` keeps."""
    return AUTO in config.methods and set(auto_candidates()) <= set(config.methods)


def auto_from_candidates(runs: dict[str, Any]) -> dict[str, Any]:
    tried = {m: runs[m] for m in auto_candidates() if "error" not in runs.get(m, {"error": ""})}
    if not tried:
        return {"error": "every candidate of auto failed"}
    kept: dict[str, Any] = {}
    candidates: list[dict[str, Any]] = []
    for method in run_order(list(tried)):  # what `auto` would run, and skip once context tuning settles it
        skip = settled(kept[PREFERRED]["dev_metrics"]) if PREFERRED in kept else None
        if skip is not None:
            candidates.append({"method": method, "skipped": skip})
            continue
        kept[method] = tried[method]
        candidates.append({"method": method, **candidate_scores(tried[method]["dev_metrics"])})
    chosen, reason = choose({m: kept[m]["dev_metrics"] for m in tried if m in kept})
    dev = tried[chosen]["dev_metrics"]
    return {
        **tried[chosen],
        "derived_from_candidates": True,
        "dev_metrics": {**dev, "auto": {"chose": chosen, "reason": reason, "candidates": candidates}},
    }


def run_suite(config: EvalConfig, backend: Backend, reporter: Reporter | None = None) -> dict[str, Any]:
    """Evaluate every task of the config on the backend; the result is what results.json holds."""
    reporter = reporter or NullReporter()
    reporter.begin(len(config.tasks) * (2 + len(config.methods)))
    started, when = time.perf_counter(), datetime.now(timezone.utc)
    meta = {**backend.info(), **machine_info(), "started": when.isoformat(timespec="seconds")}
    meta["command"] = reproduce_command(config)
    tasks = {task: evaluate_task(backend, task, config, reporter) for task in config.tasks}
    meta["seconds"] = round(time.perf_counter() - started, 1)
    reporter.status("done")
    return {
        "config": asdict(config),
        "meta": meta,
        "definitions": {**DEFINITIONS, "few_shot": f"k={config.k_shot}: {DEFINITIONS['few_shot']}"},
        "tasks": tasks,
        "summary": summarise(tasks, config),
    }


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }
    if "torch" in sys.modules:
        info["torch"] = sys.modules["torch"].__version__
    return info
