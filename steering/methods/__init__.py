"""Steering methods: each turns demonstrations into a TaskVector.

`compute_vector` is the one entry point; every method module exposes `compute(job, options)`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib import import_module
from typing import Any

from steering.methods.common import Cancelled, Job, ProgressFn
from steering.model import LoadedModel
from steering.protocol import Demonstration, Template
from steering.templates import DEFAULT_TEMPLATE
from steering.vectors import TaskVector

METHODS: tuple[str, ...] = ("task_vector", "function_vector", "icv", "contrastive", "soft_injection", "auto")

__all__ = ["METHODS", "Cancelled", "compute_vector", "options_model"]


def _module(method: str):
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return import_module(f"steering.methods.{method}")


def options_model(method: str):
    """The pydantic model that validates a method's options (for checking a request before queueing it)."""
    return _module(method).OPTIONS


def compute_vector(
    lm: LoadedModel,
    demonstrations: Sequence[Demonstration],
    method: str = "auto",
    *,
    template: Template | None = None,
    options: dict[str, Any] | None = None,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TaskVector:
    job = Job(
        lm=lm,
        demonstrations=list(demonstrations),
        template=template or DEFAULT_TEMPLATE,
        progress=progress or (lambda info: None),
        should_stop=should_stop or (lambda: False),
    )
    return _module(method).compute(job, dict(options or {}))
