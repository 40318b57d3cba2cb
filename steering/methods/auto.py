"""`auto`: compute the candidate methods and keep the best on held-out data.

Every candidate uses the same seed and dev fraction, hence the same held-out demonstrations, so their
dev accuracies compare like for like. Candidates run cheapest first; which of them start is the budget's
(`auto_budget`): by default all of them, whatever the model's size or the machine's load. Soft injection
also early-stops on that split, which favours it slightly in the comparison.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from pydantic import Field

from steering.methods.auto_budget import Budget, ceiling_for
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
    time_budget_s: float | None = Field(
        None,
        gt=0,
        description=(
            "Wall-clock seconds: a candidate expected to end past them is skipped. Unset: every candidate runs "
            "(the choice does not depend on the model's size or the machine's load) unless it would end past "
            "a 1500 s ceiling that protects the server."
        ),
    )
    method_options: dict[CandidateMethod, dict[str, Any]] = Field(
        default_factory=dict, description="Extra options per candidate method, e.g. {'soft_injection': {'steps': 60}}."
    )

    def candidate_options(self, method: str) -> dict[str, Any]:
        """What `method` computes with as a candidate: only the options the caller set are passed on (each candidate
        keeps its own defaults: soft injection's k_shot and num_prompts differ from the others'), then its own."""
        shared = self.model_dump(exclude_unset=True, exclude={"candidates", "time_budget_s", "method_options"})
        return {**shared, **self.method_options.get(method, {})}


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
    budget = Budget(opts.time_budget_s, ceiling_for(job.time_limit_s))
    started = time.perf_counter()
    tried: list[dict[str, Any]] = []
    best: TaskVector | None = None  # the first candidate always runs
    unit_cost: float | None = None
    for method in opts.candidates:
        elapsed = time.perf_counter() - started
        spec = methods[method]
        expected = unit_cost * spec.relative_cost if unit_cost is not None else 0.0
        skip = budget.skip_reason(elapsed, expected) if best is not None else None
        if skip is not None:
            tried.append({"method": method, "skipped": skip})
            continue
        job.check()
        sub_job = Job(
            job.lm,
            job.demonstrations,
            job.template,
            progress=lambda info, m=method: job.progress({"candidate": m, **info}),
            should_stop=job.should_stop,
            time_limit_s=job.time_limit_s,
            memo=job.memo,
        )
        vector = spec.compute(sub_job, opts.candidate_options(method))
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
        "budget": budget.describe(),
    }
    best.compute_seconds = time.perf_counter() - started
    return best
