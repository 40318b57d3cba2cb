"""scripts/plot_model_sizes: several models' results on the same tasks, as a table and a plot by model size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from scripts.plot_model_sizes import FEW_SHOT, parameters, plot, scores


def result(model: str, few_shot: dict[str, float], steered: dict[str, float]) -> dict[str, Any]:
    """What `steer eval` writes, reduced to what the script reads."""
    tasks = {
        name: {
            "conditions": {"few_shot": {"exact": few_shot[name]}},
            "methods": {"context_tuning": {"steered": {"exact": v}}},
        }
        for name, v in steered.items()
    }
    return {"meta": {"model": model}, "tasks": tasks}


def test_parameters_are_read_off_the_name() -> None:
    assert parameters("SmolLM2-135M-Instruct") == 135.0
    assert parameters("Qwen2.5-Coder-1.5B-Instruct") == 1500.0
    with pytest.raises(SystemExit, match="no size"):
        parameters("mystery-model")


def test_each_model_is_scored_on_the_tasks_asked_for_and_plotted(tmp_path: Path) -> None:
    small = result("Tiny-135M", {"a": 0.2, "b": 0.4, "c": 0.9}, {"a": 0.5, "b": 0.3, "c": 0.0})
    large = result("Big-1.5B", {"a": 0.6, "b": 0.8}, {"a": 0.7, "b": 1.0})
    table = scores([small, large], ["a", "b"], ["context_tuning"])
    assert table == {
        "Tiny-135M": {FEW_SHOT: [0.2, 0.4], "context_tuning": [0.5, 0.3]},
        "Big-1.5B": {FEW_SHOT: [0.6, 0.8], "context_tuning": [0.7, 1.0]},
    }
    plot(table, tmp_path / "sizes.png")
    assert (tmp_path / "sizes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit, match=r"Big-1\.5B: no 10-shot result for c"):
        scores([small, large], ["a", "c"], ["context_tuning"])
