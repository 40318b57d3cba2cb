"""The compiled (graph-safe) form of steering: tensor ops installed in the model before vLLM compiles it.

Nothing here branches on the batch: every op is a fixed sequence of tensor operations over persistent buffers
(registered buffers of one `SteeringTables` module), which the host rewrites in place before each forward
(`graph_steering.py`). torch.compile traces the ops into the model's graph and a captured CUDA graph replays
them, both reading whatever the buffers hold at the time. The buffers:

- `token_row[t]`: for token t of the flattened batch, a row of the coefficient table; row 0 is all zeros, the
  row of plain tokens and of padding;
- `coef[layer, row, column]`: how much of each vector column a token of that row takes at that layer, its
  strength with the term's layers and position rule already applied. Columns `0..S` are the slots' vectors
  (column 0 is empty), columns `S+1..2S+1` the slots' answer head mixes (`head_mix_answer` past the prompt).
  A token takes every column at once, so any number of tasks per request fit with no fixed limit per token;
- per-slot tables: `residual[layer, column]` (the vector's residual row), `op_masks[op, column]` (which of
  add / replace / norm-keeping add a column's vector does), `gates[layer, column, head]` and
  `targets[layer, column, head·dim]` (sigmoid(gate) and sigmoid(gate)·mean on this rank's heads).

The ops compute for every token what the eager path (`token_steering.StepSteering`) computes for steered
ones, in the same order (replace, adds, then the norm-keeping add); for a token of row 0 each op multiplies
by one and adds zero, which leaves it bitwise unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from steering.steer.inject import add_keeping_norm

OP_ADD, OP_REPLACE, OP_NORM = 0, 1, 2  # rows of `op_masks`
PHASES = 3  # coefficient rows per plan: tokens before the last prompt token, the last prompt token, the answer's


class SteeringTables(nn.Module):
    """Every persistent buffer the compiled ops read, shared by all layers of one rank."""

    def __init__(
        self,
        *,
        num_layers: int,
        hidden_size: int,
        num_heads: int,  # on this rank
        head_dim: int,
        max_slots: int,
        max_tokens: int,
        max_plans: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.slots = max_slots + 1  # column 0 is the empty slot
        self.num_heads, self.head_dim = num_heads, head_dim
        columns = 2 * self.slots
        rows = 1 + PHASES * max_plans
        kw = {"device": device}
        self.register_buffer("token_row", torch.zeros(max_tokens, dtype=torch.int64, **kw), persistent=False)
        self.register_buffer("coef", torch.zeros(num_layers, rows, columns, dtype=dtype, **kw), persistent=False)
        self.register_buffer("op_masks", torch.zeros(3, self.slots, dtype=dtype, **kw), persistent=False)
        residual = torch.zeros(num_layers, self.slots, hidden_size, dtype=dtype, **kw)
        self.register_buffer("residual", residual, persistent=False)
        gates = torch.zeros(num_layers, columns, num_heads, dtype=dtype, **kw)
        self.register_buffer("gates", gates, persistent=False)
        targets = torch.zeros(num_layers, columns, num_heads * head_dim, dtype=dtype, **kw)
        self.register_buffer("targets", targets, persistent=False)

    def token_coefs(self, layer: int, num_tokens: int) -> Tensor:
        """[tokens, columns]: each token's coefficients at this layer."""
        return self.coef[layer].index_select(0, self.token_row[:num_tokens])

    def steer_residual(self, layer: int, hidden: Tensor, residual: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """A decoder layer's (hidden, residual) output: the whole steered state in hidden, residual zero (vLLM
        adds the two in the next layer's norm, so plain tokens come out the same)."""
        weights = self.token_coefs(layer, hidden.shape[0])[:, : self.slots]
        parts = weights.unsqueeze(1) * self.op_masks  # [tokens, op, slot]
        sums = torch.matmul(parts, self.residual[layer])  # [tokens, op, hidden]
        state = hidden if residual is None else hidden + residual
        keep = 1 - parts[:, OP_REPLACE].sum(dim=-1, keepdim=True)
        state = state * keep + sums[:, OP_REPLACE] + sums[:, OP_ADD]
        norm_kept = parts[:, OP_NORM].ne(0).any(dim=-1, keepdim=True)
        state = torch.where(norm_kept, add_keeping_norm(state, sums[:, OP_NORM]), state)
        return state, None if residual is None else torch.zeros_like(residual)

    def steer_heads(self, layer: int, heads: Tensor) -> Tensor:
        """The attention output projection's input ([tokens, this rank's heads × head_dim]), each head mixed as
        (1 - a)·z + a·mean."""
        tokens = heads.shape[0]
        weights = self.token_coefs(layer, tokens)
        share = torch.matmul(weights, self.gates[layer]).unsqueeze(-1)  # [tokens, heads, 1]
        target = torch.matmul(weights, self.targets[layer]).view(tokens, self.num_heads, self.head_dim)
        mixed = heads.view(tokens, self.num_heads, self.head_dim) * (1 - share) + target
        return mixed.view(tokens, self.num_heads * self.head_dim)


class LayerSteering(nn.Module):
    """One decoder layer's handle on the shared tables (a child of the layer, so that the compiled graph reaches
    the buffers through module attributes, the way it reaches weights)."""

    def __init__(self, tables: SteeringTables, layer: int) -> None:
        super().__init__()
        self.tables, self.layer = tables, layer


def residual_hook(module: nn.Module, args: object, output: object) -> object:
    """Forward hook of a decoder layer carrying a `steering` child."""
    steering: LayerSteering = module.steering  # type: ignore[assignment]
    if isinstance(output, tuple):
        residual = output[1] if len(output) > 1 else None
        hidden, residual = steering.tables.steer_residual(steering.layer, output[0], residual)
        return (hidden, residual, *output[2:]) if len(output) > 1 else (hidden,)
    assert isinstance(output, Tensor)
    return steering.tables.steer_residual(steering.layer, output, None)[0]


def heads_hook(module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Forward pre-hook of an attention output projection carrying a `steering` child."""
    steering: LayerSteering = module.steering  # type: ignore[assignment]
    return (steering.tables.steer_heads(steering.layer, args[0]), *args[1:])
