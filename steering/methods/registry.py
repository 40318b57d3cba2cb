"""The registry of steering methods: each name of `steering.method_names` mapped to its code and properties."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from steering.method_names import METHOD_NAMES
from steering.methods import auto, contrastive, function_vector, icv, soft_injection, task_vector
from steering.methods.common import Job, MethodOptions
from steering.vectors import TaskVector


@dataclass(frozen=True)
class MethodSpec:
    options: type[MethodOptions]  # validates the method's options
    compute: Callable[[Job, dict], TaskVector]
    # Expected cost relative to a task vector's; `auto` uses it to skip candidates that would overrun its budget.
    relative_cost: float = 1.0
    tried_by_auto: bool = False  # among `auto`'s default candidates (in registry order)


def _spec(module, relative_cost: float = 1.0, tried_by_auto: bool = False) -> MethodSpec:
    return MethodSpec(module.OPTIONS, module.compute, relative_cost, tried_by_auto)


# In the order of METHOD_NAMES. ICV and contrastive are for style tasks, so `auto` does not try them by default.
METHODS: Mapping[str, MethodSpec] = {
    "icv": _spec(icv, relative_cost=0.5),
    "task_vector": _spec(task_vector, relative_cost=1.0, tried_by_auto=True),
    "function_vector": _spec(function_vector, relative_cost=2.0, tried_by_auto=True),
    "soft_injection": _spec(soft_injection, relative_cost=6.0, tried_by_auto=True),
    "contrastive": _spec(contrastive, relative_cost=1.0),
    "auto": _spec(auto),
}
if tuple(METHODS) != METHOD_NAMES:
    raise RuntimeError("the registry must name each method of steering.method_names once, in that order")


def method_spec(method: str) -> MethodSpec:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return METHODS[method]


def auto_candidates() -> list[str]:
    """The methods `auto` tries when the request names none."""
    return [name for name, spec in METHODS.items() if spec.tried_by_auto]
