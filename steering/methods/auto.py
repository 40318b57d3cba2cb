"""`auto`: compute the candidate methods and keep the best on held-out data.

Every candidate uses the same seed and dev fraction, hence the same held-out demonstrations, so their
dev accuracies compare like for like. Candidates run cheapest first; which of them start is the budget's
(`auto_budget`): by default all of them, whatever the model's size or the machine's load. Soft injection
also early-stops on that split, which favours it slightly in the comparison.

Ten held-out answers cannot rank two candidates a few points apart, so `choose` keeps context tuning, the
candidate with the best record on tasks nobody tuned on, unless another beats it on held-out exact match by more
than chance (the verdicts' 95 % margin). On the 54 task-and-model pairs measured before it, it scored 0.6 points
above keeping the highest held-out score; on the fifth held-out set, judged after, it changed three choices of ten,
each for the better (docs/RESULTS.md, issue 22 round 8). With more held-out answers the margin narrows.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from pydantic import Field

from steering.methods.auto_budget import Budget, ceiling_for
from steering.methods.common import Job, MethodOptions, MethodSpec
from steering.tasks.verdict import chance_margin
from steering.vectors.task_vector import TaskVector
from steering.wire.method_names import VectorMethod

CandidateMethod = VectorMethod
PREFERRED: CandidateMethod = "context_tuning"
BEST_REASON = "highest held-out exact match (ties: first-token accuracy, then the log-probability of the right token)"


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


def rank_key(metrics: Mapping[str, Any]) -> tuple[float, float, float]:
    """How candidates compare: held-out exact match first (what users see), then first-token accuracy, then
    the log-probability of the right first token."""
    return (
        metrics.get("dev_steered_exact", 0.0),
        metrics.get("dev_steered_accuracy", 0.0),
        metrics.get("dev_steered_logprob", -1e9),
    )


def choose(metrics: Mapping[str, Mapping[str, Any]]) -> tuple[str, str]:
    """Which of the candidates (each one's metrics, by method) to keep, and why."""
    best = max(metrics, key=lambda method: rank_key(metrics[method]))
    preferred = metrics.get(PREFERRED)
    if preferred is None or best == PREFERRED:
        return best, BEST_REASON
    ours, theirs = preferred.get("dev_steered_exact"), metrics[best].get("dev_steered_exact")
    held_out = preferred.get("dev_size")
    if not isinstance(ours, float | int) or not isinstance(theirs, float | int) or not isinstance(held_out, int):
        return best, BEST_REASON
    margin = chance_margin(float(theirs), float(ours), held_out)
    if theirs - ours > margin:
        return best, f"{BEST_REASON}; it beat {PREFERRED} by more than chance (±{100 * margin:.0f} points)"
    return PREFERRED, (
        f"{best} scored {100 * theirs:.0f} % on {held_out} held-out answers against {PREFERRED}'s {100 * ours:.0f} %, "
        f"within chance (±{100 * margin:.0f} points): {PREFERRED} is kept, the best on tasks nobody tuned on"
    )


def compute(job: Job, options: AutoOptions, methods: Mapping[str, MethodSpec]) -> TaskVector:
    """The best of `options.candidates`, each computed by its spec in `methods`."""
    opts = options
    budget = Budget(opts.time_budget_s, ceiling_for(job.time_limit_s))
    started = time.perf_counter()
    tried: list[dict[str, Any]] = []
    computed: dict[str, TaskVector] = {}
    unit_cost: float | None = None
    for method in opts.candidates:
        elapsed = time.perf_counter() - started
        spec = methods[method]
        expected = unit_cost * spec.relative_cost if unit_cost is not None else 0.0
        skip = budget.skip_reason(elapsed, expected) if computed else None  # the first candidate always runs
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
        computed.setdefault(method, vector)
    chosen, reason = choose({method: vector.metrics for method, vector in computed.items()})
    best = computed[chosen]
    best.metrics["auto"] = {
        "chose": best.method,
        "reason": reason,
        "candidates": tried,
        "budget": budget.describe(),
    }
    best.compute_seconds = time.perf_counter() - started
    return best
