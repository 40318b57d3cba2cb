"""The registry of steering methods: each name of `steering.wire.method_names` mapped to its code and properties."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field, model_validator

from steering.methods import auto, contrastive, function_vector, icv, soft_injection, task_vector
from steering.methods.common import Job, MethodSpec
from steering.vectors.task_vector import TaskVector
from steering.wire.method_names import METHOD_NAMES


def _spec(module, relative_cost: float = 1.0, tried_by_auto: bool = False) -> MethodSpec:
    return MethodSpec(module.OPTIONS, module.compute, relative_cost, tried_by_auto)


# In the order of METHOD_NAMES. ICV and contrastive are for style tasks, so `auto` does not try them by default.
VECTOR_METHODS: Mapping[str, MethodSpec] = {
    "icv": _spec(icv, relative_cost=0.5),
    "task_vector": _spec(task_vector, relative_cost=1.0, tried_by_auto=True),
    "function_vector": _spec(function_vector, relative_cost=2.0, tried_by_auto=True),
    "soft_injection": _spec(soft_injection, relative_cost=6.0, tried_by_auto=True),
    "contrastive": _spec(contrastive, relative_cost=1.0),
}


def auto_candidates() -> list[str]:
    """The methods `auto` tries when the request names none."""
    return [name for name, spec in VECTOR_METHODS.items() if spec.tried_by_auto]


class CheckedAutoOptions(auto.AutoOptions):
    """`auto`'s options with the registry's default candidates, each candidate's options checked now by that
    method's own model (a request with bad ones is refused before it is queued, not when it runs)."""

    candidates: list[auto.CandidateMethod] = Field(
        default_factory=auto_candidates,
        min_length=1,
        description=auto.AutoOptions.model_fields["candidates"].description,
    )

    @model_validator(mode="after")
    def _candidate_options(self) -> CheckedAutoOptions:
        shared = self.model_dump(exclude_unset=True, exclude={"candidates", "time_budget_s", "method_options"})
        for method, extra in self.method_options.items():
            VECTOR_METHODS[method].options(**{**shared, **extra})  # as `auto.compute` will combine them
        return self


def _compute_auto(job: Job, options: dict[str, Any]) -> TaskVector:
    return auto.compute(job, CheckedAutoOptions(**options), VECTOR_METHODS)


METHODS: Mapping[str, MethodSpec] = {**VECTOR_METHODS, "auto": MethodSpec(CheckedAutoOptions, _compute_auto)}
if tuple(METHODS) != METHOD_NAMES:
    raise RuntimeError("the registry must name each method of steering.wire.method_names once, in that order")


def method_spec(method: str) -> MethodSpec:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return METHODS[method]
