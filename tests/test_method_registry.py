"""The method registry finds each method in its own module (a `SPEC`) and holds it to the wire's names."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from steering.methods import registry
from steering.methods.common import MethodSpec
from steering.tasks import verdict
from steering.wire.method_names import METHOD_NAMES, VECTOR_METHOD_NAMES


def test_every_wire_method_is_declared_by_its_module_in_wire_order() -> None:
    assert tuple(registry.VECTOR_METHODS) == VECTOR_METHOD_NAMES
    assert tuple(registry.METHODS) == METHOD_NAMES
    for name, spec in registry.VECTOR_METHODS.items():
        assert spec.name == name
        assert spec is sys.modules[f"steering.methods.{name}"].SPEC


def test_style_and_auto_candidates_come_from_the_specs() -> None:
    assert sorted(registry.STYLE_METHODS) == ["contrastive", "icv"]
    assert registry.STYLE_METHODS == verdict.STYLE_METHODS  # the verdict's own list (a lower layer) agrees
    assert registry.auto_candidates() == ["task_vector", "function_vector", "soft_injection", "context_tuning"]


def test_a_new_method_is_found_from_its_module_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "more_methods"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helpers.py").write_text("VALUE = 1\n")  # no SPEC: not a method
    (package / "echo.py").write_text(
        "from steering.methods.common import MethodOptions, MethodSpec\n"
        "def compute(job, options):\n"
        "    raise NotImplementedError\n"
        "SPEC = MethodSpec('echo', MethodOptions, compute, relative_cost=0.1, style=True)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    found = registry.declared_specs(package, "more_methods")
    assert list(found) == ["echo"] and isinstance(found["echo"], MethodSpec) and found["echo"].style
    with pytest.raises(RuntimeError, match=r"declared but not on the wire \['echo'\]"):
        registry.in_wire_order({**registry.VECTOR_METHODS, **found})
    with pytest.raises(RuntimeError, match=r"on the wire but declared by no module \['icv'\]"):
        registry.in_wire_order({k: v for k, v in registry.VECTOR_METHODS.items() if k != "icv"})
