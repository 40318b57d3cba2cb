"""Steering methods: each turns demonstrations into a TaskVector.

`compute_vector` is the one entry point; `registry.py` maps each method's name to its options and `compute`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from steering.methods.common import Cancelled, Job, MethodOptions, ProgressFn, job_answer_end
from steering.methods.registry import method_spec
from steering.model.loading import LoadedModel
from steering.tasks.templates import DEFAULT_TEMPLATE
from steering.vectors.task_vector import TaskVector
from steering.wire.method_names import METHOD_NAMES
from steering.wire.protocol import Demonstration, Template

METHODS: tuple[str, ...] = METHOD_NAMES

__all__ = ["METHODS", "Cancelled", "compute_vector", "options_model"]


def options_model(method: str) -> type[MethodOptions]:
    """The pydantic model that validates a method's options (for checking a request before queueing it)."""
    return method_spec(method).options


def compute_vector(
    lm: LoadedModel,
    demonstrations: Sequence[Demonstration],
    method: str = "auto",
    *,
    template: Template | None = None,
    options: dict[str, Any] | None = None,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    time_limit_s: float | None = None,
) -> TaskVector:
    job = Job(
        lm=lm,
        demonstrations=list(demonstrations),
        template=template or DEFAULT_TEMPLATE,
        progress=progress or (lambda info: None),
        should_stop=should_stop or (lambda: False),
        time_limit_s=time_limit_s,
    )
    vector = method_spec(method).compute(job, dict(options or {}))
    vector.answer_end = job_answer_end(job)
    return vector
