"""scripts/engine_checks: the device check's counts of rows that hold each invariant, and what steering costs."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from scripts.engine_checks import SHAPES, _agreement, main, random_shaped_model
from steering.model.loading import pick_device


def test_agreement_reports_where_rows_part() -> None:
    report = _agreement([([1, 2, 3], [1, 2, 3]), ([1, 2, 3], [1, 5, 3]), ([4], [4, 6])])
    assert report == {"rows": 3, "equal": 1, "first_differing_token": [1, 1]}


def test_every_invariant_holds_on_every_row_in_float32(tmp_path: Path) -> None:
    """On a CPU in float32 the engine is exact: every row the script counts must hold (a GPU in bfloat16 need not)."""
    out = tmp_path / "checks.json"
    assert main(["--model", "tiny:llama", "--quick", "--device", "cpu", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["machine"]["dtype"] == "float32"
    invariants = report["invariants"]
    names = ("strength_zero_equals_plain", "mixed_batch_equals_alone", "joining_rows_equal_alone")
    for name in (*names, "unsteered_rows_of_the_mixed_batch_equal_alone"):
        assert invariants[name]["rows"] > 0
        assert invariants[name]["equal"] == invariants[name]["rows"], name
    costs = report["costs"]
    assert set(costs["decode_ms_per_token_batch1"]) == {"unsteered", *report["compute_s"]}
    assert costs["prefix_tokens"] > 0 and costs["prefix_cache_build_ms"] > 0


def test_a_random_shaped_model_has_the_shape_it_names() -> None:
    shape = SHAPES["smollm2-1.7b"]
    lm = random_shaped_model("smollm2-1.7b", pick_device("cpu"), torch.float32, num_hidden_layers=2)  # 24: seconds
    assert lm.arch.num_layers == 2 and lm.arch.hidden_size == shape["hidden_size"]
    assert lm.arch.num_heads == shape["num_attention_heads"]
    assert lm.name == "random:smollm2-1.7b"
