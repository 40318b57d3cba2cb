"""The registry of steering methods, found in their modules: each module of this package that declares a
`SPEC` (a `MethodSpec`) is a method. Adding one is its module and its test; its name must also be in
`steering.wire.method_names`, the HTTP contract (torch-free, so it cannot ask the modules), and the
registry refuses to load while the two disagree."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from steering.methods import auto
from steering.methods.common import BASELINE_SHOTS, Job, MethodSpec
from steering.vectors.task_vector import TaskVector
from steering.wire.method_names import VECTOR_METHOD_NAMES


def declared_specs(folder: Path = Path(__file__).parent, package: str = __package__) -> dict[str, MethodSpec]:
    """The `SPEC` of every module of a package (this one) that declares one, by name."""
    found: dict[str, MethodSpec] = {}
    for module_info in pkgutil.iter_modules([str(folder)]):
        if f"{package}.{module_info.name}" == __name__:
            continue
        spec = getattr(importlib.import_module(f"{package}.{module_info.name}"), "SPEC", None)
        if isinstance(spec, MethodSpec):
            if spec.name in found:
                raise RuntimeError(f"two modules of steering.methods declare the method {spec.name!r}")
            found[spec.name] = spec
    return found


def in_wire_order(specs: Mapping[str, MethodSpec]) -> dict[str, MethodSpec]:
    """The specs in the order of the wire's names; an error unless both name the same methods."""
    unlisted, missing = set(specs) - set(VECTOR_METHOD_NAMES), set(VECTOR_METHOD_NAMES) - set(specs)
    if unlisted or missing:
        raise RuntimeError(
            "steering.wire.method_names and the methods' modules disagree: "
            f"declared but not on the wire {sorted(unlisted)}, on the wire but declared by no module {sorted(missing)}"
        )
    return {name: specs[name] for name in VECTOR_METHOD_NAMES}


# In the order of the wire's names. Style methods (ICV, contrastive) are not among `auto`'s default candidates.
VECTOR_METHODS: Mapping[str, MethodSpec] = in_wire_order(declared_specs())
STYLE_METHODS: frozenset[str] = frozenset(name for name, spec in VECTOR_METHODS.items() if spec.style)


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
        for method in self.method_options:
            VECTOR_METHODS[method].options(**self.candidate_options(method))
        return self


def _compute_auto(job: Job, options: dict[str, Any]) -> TaskVector:
    return auto.compute(job, CheckedAutoOptions(**options), VECTOR_METHODS)


# `auto` is declared here rather than in its module: its options and computation need the other methods' specs.
METHODS: Mapping[str, MethodSpec] = {
    **VECTOR_METHODS,
    "auto": MethodSpec("auto", CheckedAutoOptions, _compute_auto),
}


def method_spec(method: str) -> MethodSpec:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return METHODS[method]


def most_shots(method: str, options: Mapping[str, Any], demonstrations: int) -> int:
    """The most demonstrations one prompt of a task holds: the few-shot baseline's, or the `k_shot` the method (or
    each candidate `auto` runs) computes with, its options read as the computation will read them; never more than
    there are besides the prompt's own query."""
    if method == "auto":
        checked = CheckedAutoOptions(**options)
        runs = {name: checked.candidate_options(name) for name in checked.candidates}
    else:
        runs = {method: dict(options)}
    shots = [getattr(VECTOR_METHODS[name].options(**opts), "k_shot", 0) for name, opts in runs.items()]
    return max(0, min(max([BASELINE_SHOTS, *shots]), demonstrations - 1))
