"""The compiled form's ops (`graph_ops.py`) and the host's buffers (`graph_steering.py`) against the eager form's
edits (`token_steering.StepSteering`), without vLLM: one flattened batch of prefill chunks and decode tokens,
steered requests with several tasks each beside plain ones, every mode. Steered tokens match the eager edits
(float32 rounding); plain tokens come out bitwise as they went in; after `end` every token is plain again; an
unloaded vector's column is empty and goes to the next vector.
"""

from __future__ import annotations

import pytest
import torch

from steering.generation.vllm.engine import ModelDims
from steering.generation.vllm.graph_ops import SteeringTables
from steering.generation.vllm.graph_steering import GraphSteering
from steering.generation.vllm.plan import PlannedTerm, encode_plan
from steering.generation.vllm.token_steering import StepRow, StepSteering, build_layer_plans
from steering.steer.inject import SteeringTerm
from steering.vectors.modes import ACTIVATION_MODE_NAMES, expected_shapes, mode_spec
from steering.vectors.task_vector import TaskVector

SHAPE = ModelDims(num_layers=3, hidden_size=16, num_heads=4, head_dim=4, num_kv_heads=2)


def vector(mode: str, seed: int) -> TaskVector:
    gen = torch.Generator().manual_seed(seed)
    tensors = {n: torch.randn(expected_shapes(SHAPE)[n], generator=gen) for n in mode_spec(mode).tensors}
    return TaskVector("contrastive", mode, tensors, [0, 1, 2], 1.0, "test")  # type: ignore[arg-type]


VECTORS = {mode: vector(mode, i) for i, mode in enumerate(ACTIVATION_MODE_NAMES)}
# Per steered request: its terms (mode, strength, layers).
PLANS = [
    [("replace_last", 0.8, (1,)), ("add_all", -0.5, (0, 2)), ("head_mix_answer", 0.7, (0, 1, 2))],
    [("add_from_last", 0.6, (0, 1, 2)), ("add_last", 1.5, (2,)), ("head_mix_last", 1.0, (1,))],
    [("add_all_norm", 2.0, (0, 1, 2)), ("add_all", 0.3, (1,))],
    [("head_mix_answer", 1.0, (2,)), ("add_all_norm", 0.5, (0,))],
]
# (start, count, first position, prompt length): a chunk holding the last prompt token, a chunk before it, a
# decode token, a chunk wholly past the prompt; the flat tokens 0-2 and 20-22 belong to plain requests.
ROWS = [StepRow(3, 6, 10, 14), StepRow(9, 5, 0, 20), StepRow(14, 1, 30, 12), StepRow(15, 5, 9, 9)]
TOKENS = 23


def tables_with_vectors() -> tuple[SteeringTables, GraphSteering]:
    tables = SteeringTables(
        num_layers=SHAPE.num_layers,
        hidden_size=SHAPE.hidden_size,
        num_heads=SHAPE.num_heads,
        head_dim=SHAPE.head_dim,
        max_slots=8,
        max_tokens=64,
        max_plans=4,
        dtype=torch.float32,
        device=torch.device("cpu"),
    )
    graph = GraphSteering(tables, max_plans=4)
    for mode, v in VECTORS.items():
        graph.load(mode, v)
    return tables, graph


def planned() -> list[tuple[str, StepRow]]:
    plans = [encode_plan([PlannedTerm(m, s, layers) for m, s, layers in plan]) for plan in PLANS]
    return [(plan, row) for plan, row in zip(plans, ROWS, strict=True) if plan is not None]


def eager_step() -> StepSteering:
    terms = [[SteeringTerm(VECTORS[m], s, layers) for m, s, layers in plan] for plan in PLANS]
    layers = build_layer_plans(terms, SHAPE, torch.device("cpu"), torch.float32)
    return StepSteering(layers, ROWS, torch.device("cpu"))


def steered_tokens() -> torch.Tensor:
    return torch.cat([torch.arange(r.start, r.start + r.count) for r in ROWS])


@pytest.mark.parametrize("layer", range(SHAPE.num_layers))
def test_the_ops_steer_as_the_eager_edits_and_leave_plain_tokens_alone(layer: int) -> None:
    tables, graph = tables_with_vectors()
    gen = torch.Generator().manual_seed(layer)
    hidden, residual = torch.randn(TOKENS, SHAPE.hidden_size, generator=gen), torch.randn(TOKENS, SHAPE.hidden_size)
    heads = torch.randn(TOKENS, SHAPE.num_heads * SHAPE.head_dim, generator=gen)
    graph.begin(planned())
    state, zeros = tables.steer_residual(layer, hidden, residual)
    mixed = tables.steer_heads(layer, heads)
    graph.end()
    eager = eager_step()
    want_hidden, want_residual = eager.edit_residual(layer, hidden, residual)
    want_state = want_hidden + want_residual
    want_heads = eager.edit_heads(layer, heads)
    want_heads = heads if want_heads is None else want_heads
    steered = steered_tokens()
    plain = torch.ones(TOKENS, dtype=torch.bool)
    plain[steered] = False
    assert torch.allclose(state[steered], want_state[steered], atol=1e-5, rtol=1e-5)
    assert torch.allclose(mixed[steered], want_heads[steered], atol=1e-5, rtol=1e-5)
    assert not torch.equal(state[steered], (hidden + residual)[steered])  # the vectors did act
    assert torch.equal(state[plain], (hidden + residual)[plain]) and not zeros.any()
    assert torch.equal(mixed[plain], heads[plain])
    after, _ = tables.steer_residual(layer, hidden, residual)  # `end`: no token is steered any more
    assert torch.equal(after, hidden + residual)
    assert torch.equal(tables.steer_heads(layer, heads), heads)


def test_an_unloaded_vector_leaves_an_empty_column_for_the_next() -> None:
    tables, graph = tables_with_vectors()
    column = graph.column("add_all")
    assert column is not None
    graph.unload(["add_all"])
    assert not tables.residual[:, column].any() and not tables.op_masks[:, column].any()
    graph.load("again", VECTORS["head_mix_answer"])
    assert graph.column("again") == column
    assert not tables.residual[:, column].any()
    assert tables.gates[:, column + tables.slots].any()  # its answer mix
