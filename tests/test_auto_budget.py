"""`auto`'s budget: by default every candidate runs, however fast the model is (the choice must not depend on
the model's size or the machine's load), context tuning first; an explicit `time_budget_s` and the ceiling that
protects the server still stop it, and so does a held-out score of context tuning's that settles the choice.

The candidates compute for real on the tiny model; only `auto`'s clock is the one of a slower model: each
candidate advances it by its relative cost times the model's seconds per unit (a task vector's time).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch

from steering.methods import auto
from steering.methods.common import Job, MethodSpec
from steering.methods.registry import CheckedAutoOptions, auto_candidates, method_spec
from steering.model.loading import LoadedModel
from steering.tasks.datasets import load_task, split_task
from steering.tasks.templates import DEFAULT_TEMPLATE
from steering.vectors.task_vector import TaskVector

FAST: dict[str, Any] = {
    "num_prompts": 4,
    "k_shot": 3,
    "method_options": {"soft_injection": {"steps": 4, "eval_every": 2, "batch_size": 8}},
}
# Seconds per unit of relative cost: the tiny model; the default model and Qwen2.5-Coder-0.5B on 2 busy cores.
TINY, DEFAULT_MODEL, QWEN_05B = 0.05, 30.0, 120.0


class ModelClock:
    """Stands in for the `time` module inside `auto`: the time of a model `unit_s` seconds per unit."""

    def __init__(self, unit_s: float) -> None:
        self.unit_s = unit_s
        self.now = 1_000.0

    def perf_counter(self) -> float:
        return self.now

    def timed(self, spec: MethodSpec) -> MethodSpec:
        def compute(job: Job, options: dict[str, Any]) -> TaskVector:
            vector = spec.compute(job, options)
            vector.compute_seconds = self.unit_s * spec.relative_cost
            self.now += vector.compute_seconds
            return vector

        return replace(spec, compute=compute)


def run_auto(
    lm: LoadedModel,
    unit_s: float,
    monkeypatch: pytest.MonkeyPatch,
    time_limit_s: float | None = None,
    preferred_exact: float | None = None,
    **options: Any,
) -> TaskVector:
    clock = ModelClock(unit_s)
    monkeypatch.setattr(auto, "time", clock)
    methods = {name: clock.timed(method_spec(name)) for name in auto_candidates()}
    if preferred_exact is not None:
        methods[auto.PREFERRED] = scored(methods[auto.PREFERRED], preferred_exact)
    demos, _ = split_task(load_task("antonyms"), 24, 0, seed=0)
    job = Job(lm, demos, DEFAULT_TEMPLATE, time_limit_s=time_limit_s)
    return auto.compute(job, CheckedAutoOptions(**{**FAST, **options}), methods)


def scored(spec: MethodSpec, exact: float) -> MethodSpec:
    """`spec` as if its vector answered `exact` of its held-out demonstrations: a random model's prefix answers
    none, and whether `auto` runs the others depends on this score alone."""

    def compute(job: Job, options: dict[str, Any]) -> TaskVector:
        vector = spec.compute(job, options)
        vector.metrics["dev_steered_exact"] = exact
        return vector

    return replace(spec, compute=compute)


def ran(vector: TaskVector) -> list[str]:
    return [c["method"] for c in vector.metrics["auto"]["candidates"] if "skipped" not in c]


def skipped(vector: TaskVector) -> dict[str, str]:
    return {c["method"]: c["skipped"] for c in vector.metrics["auto"]["candidates"] if "skipped" in c}


def test_every_candidate_runs_and_the_choice_is_the_same_on_a_slower_model(
    tiny_llama: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = run_auto(tiny_llama, TINY, monkeypatch)
    assert ran(fast) == auto.run_order(auto_candidates())  # the random model's prefix settles nothing
    for unit_s in (DEFAULT_MODEL, QWEN_05B):
        slow = run_auto(tiny_llama, unit_s, monkeypatch)
        assert ran(slow) == auto.run_order(auto_candidates()), skipped(slow)
        assert slow.method == fast.method and slow.layers == fast.layers
        assert slow.tensors.keys() == fast.tensors.keys()
        assert all(torch.equal(slow.tensors[k], fast.tensors[k]) for k in fast.tensors)
    assert fast.metrics["auto"]["budget"]["rule"] == "every candidate, within the ceiling"


def test_an_explicit_time_budget_is_honoured(tiny_llama: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    # 30 s per unit: context tuning (3 units) ends at 90 s, the task vector would end at 120 s.
    vector = run_auto(tiny_llama, DEFAULT_MODEL, monkeypatch, time_budget_s=100)
    assert ran(vector) == ["context_tuning"]
    assert "over the time budget of 100 s" in skipped(vector)["task_vector"]
    assert "over the time budget of 100 s" in skipped(vector)["soft_injection"]
    assert vector.metrics["auto"]["budget"] == {"rule": "time_budget_s", "seconds": 100}


def test_the_ceiling_keeps_a_very_slow_model_from_computing_on(
    tiny_llama: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    from steering.methods.auto_budget import CEILING_S

    unit_s = CEILING_S / 4  # context tuning ends at 3/4 of the ceiling, the task vector at it; the rest past it
    vector = run_auto(tiny_llama, unit_s, monkeypatch)
    assert ran(vector) == ["context_tuning", "task_vector"]
    assert "ceiling" in skipped(vector)["function_vector"] and "ceiling" in skipped(vector)["soft_injection"]


def test_the_ceiling_follows_the_callers_time_limit(tiny_llama: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    # A 120 s limit (a server's STEER_COMPUTE_TIMEOUT_S): the ceiling is 100 s; at 30 s per unit context tuning
    # ends at 90 s and the task vector would end at 120 s.
    vector = run_auto(tiny_llama, DEFAULT_MODEL, monkeypatch, time_limit_s=120)
    assert ran(vector) == ["context_tuning"]
    assert "past the 100 s ceiling" in skipped(vector)["task_vector"]
    assert vector.metrics["auto"]["budget"]["ceiling_s"] == 100
    # A longer limit lets every candidate run on the same model.
    longer = run_auto(tiny_llama, DEFAULT_MODEL, monkeypatch, time_limit_s=3600)
    assert ran(longer) == auto.run_order(auto_candidates())


def test_a_held_out_score_no_candidate_can_beat_by_more_than_chance_skips_the_others(
    tiny_llama: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """24 demonstrations hold 6 out: at 6 of 6 no candidate can lead context tuning beyond chance, at 3 of 6 one
    that answered all 6 would (`auto.settled`)."""
    sure = run_auto(tiny_llama, DEFAULT_MODEL, monkeypatch, preferred_exact=1.0)
    assert sure.method == "context_tuning" and ran(sure) == ["context_tuning"]
    assert set(skipped(sure)) == set(auto_candidates()) - {"context_tuning"}
    assert all("no candidate can beat it by more than chance" in why for why in skipped(sure).values())
    assert sure.metrics["auto"]["reason"].startswith("context_tuning answered 100 % of 6 held-out demonstrations")
    unsure = run_auto(tiny_llama, DEFAULT_MODEL, monkeypatch, preferred_exact=0.5)
    assert ran(unsure) == auto.run_order(auto_candidates()) and unsure.method == "context_tuning"
