"""`auto`: compute the candidate methods that fit the time budget and keep the best on held-out data.

Every candidate uses the same seed and dev fraction, hence the same held-out demonstrations, so their
dev accuracies compare like for like. Candidates run cheapest first; one is skipped when the time
left is less than what it is expected to need. Soft injection also early-stops on that split, which
favours it slightly in the comparison.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from pydantic import Field

from steering.methods.common import Job, MethodOptions, MethodSpec
from steering.vectors.task_vector import TaskVector
from steering.wire.method_names import VectorMethod

CandidateMethod = VectorMethod


class AutoOptions(MethodOptions):
    # The registry's subclass (`registry.CheckedAutoOptions`) fills the default with the methods marked
    # `tried_by_auto` and checks each candidate's options by that method's own model.
    candidates: list[CandidateMethod] = Field(
        min_length=1,
        description="Methods to try, in order. ICV and contrastive are for style tasks and are not tried by default.",
    )
    time_budget_s: float = Field(240.0, gt=0, description="Stop trying further candidates past this budget.")
    method_options: dict[CandidateMethod, dict[str, Any]] = Field(
        default_factory=dict, description="Extra options per candidate method, e.g. {'soft_injection': {'steps': 60}}."
    )


def rank_key(metrics: dict[str, Any]) -> tuple[float, float, float]:
    """How candidates compare: held-out exact match first (what users see), then first-token accuracy, then
    the log-probability of the right first token."""
    return (
        metrics.get("dev_steered_exact", 0.0),
        metrics.get("dev_steered_accuracy", 0.0),
        metrics.get("dev_steered_logprob", -1e9),
    )


def compute(job: Job, options: AutoOptions, methods: Mapping[str, MethodSpec]) -> TaskVector:
    """The best of `options.candidates`, each computed by its spec in `methods`."""
    opts = options
    # Only what the caller set is passed on: each candidate keeps its own defaults (soft injection's
    # k_shot and num_prompts differ from the others'), so a candidate computes exactly as it would alone.
    shared = opts.model_dump(exclude_unset=True, exclude={"candidates", "time_budget_s", "method_options"})
    started = time.perf_counter()
    tried: list[dict[str, Any]] = []
    best: TaskVector | None = None  # the first candidate always runs
    unit_cost: float | None = None
    for method in opts.candidates:
        elapsed = time.perf_counter() - started
        spec = methods[method]
        expected = unit_cost * spec.relative_cost if unit_cost is not None else 0.0
        if best is not None and elapsed + expected > opts.time_budget_s:
            tried.append({"method": method, "skipped": f"expected {expected:.0f} s, over the time budget"})
            continue
        job.check()
        sub_job = Job(
            job.lm,
            job.demonstrations,
            job.template,
            progress=lambda info, m=method: job.progress({"candidate": m, **info}),
            should_stop=job.should_stop,
            memo=job.memo,
        )
        vector = spec.compute(sub_job, {**shared, **opts.method_options.get(method, {})})
        if unit_cost is None:
            unit_cost = vector.compute_seconds / spec.relative_cost
        tried.append(
            {
                "method": method,
                "dev_exact": vector.metrics.get("dev_steered_exact"),
                "dev_accuracy": vector.metrics.get("dev_steered_accuracy"),
                "dev_logprob": vector.metrics.get("dev_steered_logprob"),
                "seconds": round(vector.compute_seconds, 2),
            }
        )
        if best is None or rank_key(vector.metrics) > rank_key(best.metrics):
            best = vector
    best.metrics["auto"] = {
        "chose": best.method,
        "reason": (
            "highest held-out exact match (ties: first-token accuracy, then the log-probability of the right token)"
        ),
        "candidates": tried,
    }
    best.compute_seconds = time.perf_counter() - started
    return best
