"""`auto`: compute the candidate methods and keep the best on held-out data.

Every candidate uses the same seed and dev fraction, hence the same held-out demonstrations, so their
dev accuracies compare like for like. Context tuning runs first, then the others cheapest first; which of them
start is the budget's (`auto_budget`): by default all of them, whatever the model's size or the machine's load,
unless context tuning's held-out score already settles the choice (`settled`). Soft injection also early-stops
on that split, which favours it slightly in the comparison.

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
# With too few demonstrations none is held out (under 6 at the default dev fraction; `split_demonstrations`): the
# candidates are then scored on the demonstrations they were fitted to, which flatters them (soft injection
# answered 4 of its 4 and 27 % of the test items, issue 22 round 13), except context tuning, whose prefix answers
# each without that demonstration's columns.
UNHELD_REASON = (
    f"no demonstrations were held out: only {PREFERRED}'s score is not measured on what it was fitted to "
    "(each demonstration is answered without its own columns in the prefix), so it is kept"
)


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
    if preferred is not None and (why := settled(preferred)) is not None:
        return PREFERRED, why
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


def run_order(candidates: list[str]) -> list[str]:
    """Context tuning first, when it is a candidate: whether the others can still change the choice depends on
    its held-out score (`settled`), and under a tight budget the candidate `choose` prefers has run. The rest
    keep their order (cheapest first by default)."""
    return sorted(candidates, key=lambda method: method != PREFERRED)


def settled(preferred: Mapping[str, Any]) -> str | None:
    """Why `choose` keeps context tuning whatever the others score, once it scored `preferred` (None when another
    could win): nothing was held out (`UNHELD_REASON`), or even a candidate that answers every held-out
    demonstration would not lead it by more than chance (a perfect score's lead over the margin is the largest any
    score has: it grows with the score), so the margin rule would keep it too. The others need not run: the choice
    is the same, sooner (48 of 134 saved evaluations, 23 % of `auto`'s time there; docs/RESULTS.md, issue 22 round
    13)."""
    if preferred.get("held_out") is False:
        return UNHELD_REASON
    ours, held_out = preferred.get("dev_steered_exact"), preferred.get("dev_size")
    if not isinstance(ours, float | int) or not isinstance(held_out, int):
        return None
    margin = chance_margin(1.0, float(ours), held_out)
    if 1.0 - ours > margin:
        return None
    return (
        f"{PREFERRED} answered {100 * ours:.0f} % of {held_out} held-out demonstrations: no candidate can beat it "
        f"by more than chance (±{100 * margin:.0f} points at 100 %)"
    )


def candidate_scores(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """A computed candidate's held-out scores as `auto`'s report lists them (the keys `rank_key` ranks by)."""
    return {
        "dev_exact": metrics.get("dev_steered_exact"),
        "dev_accuracy": metrics.get("dev_steered_accuracy"),
        "dev_logprob": metrics.get("dev_steered_logprob"),
    }


def compute(job: Job, options: AutoOptions, methods: Mapping[str, MethodSpec]) -> TaskVector:
    """The best of `options.candidates`, each computed by its spec in `methods`."""
    opts = options
    budget = Budget(opts.time_budget_s, ceiling_for(job.time_limit_s))
    started = time.perf_counter()
    tried: list[dict[str, Any]] = []
    computed: dict[str, TaskVector] = {}
    unit_cost: float | None = None
    for method in run_order(opts.candidates):
        elapsed = time.perf_counter() - started
        spec = methods[method]
        expected = unit_cost * spec.relative_cost if unit_cost is not None else 0.0
        skip = budget.skip_reason(elapsed, expected) if computed else None  # the first candidate always runs
        if skip is None and PREFERRED in computed:
            skip = settled(computed[PREFERRED].metrics)
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
            {"method": method, **candidate_scores(vector.metrics), "seconds": round(vector.compute_seconds, 2)}
        )
        computed.setdefault(method, vector)
    # In the candidates' own order, as before context tuning ran first: `choose` breaks ties by it.
    chosen, reason = choose({m: computed[m].metrics for m in opts.candidates if m in computed})
    best = computed[chosen]
    best.metrics["auto"] = {
        "chose": best.method,
        "reason": reason,
        "candidates": tried,
        "budget": budget.describe(),
    }
    best.compute_seconds = time.perf_counter() - started
    return best
