"""One forward pass's steering on vLLM's flattened batch: which token belongs to which request, and the edits.

vLLM runs every scheduled token of every request as one flat sequence. A steered request contributes
`count` tokens starting at flat index `start`, at positions `first_position ...` of its own sequence; its
last prompt token is the one at position `prompt_len - 1`, whichever prefill chunk it falls in
(`computed <= P-1 < computed + scheduled`), and its answer's tokens are those at positions >= P.

The edits themselves are the transformers engine's: each request's terms summed per layer by
`steering.steer.inject.row_edits` (one row per steered request) and applied with the same functions
(`replace_state`, `add_keeping_norm`, `mix_heads`), in the same order as `BatchSteering.edit_residual`.
Tokens of plain requests, and tokens of steered requests where none of their ops acts, are not touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from steering.steer.inject import LayerEdit, SteeringTerm, add_keeping_norm, mix_heads, replace_state, row_edits
from steering.vectors.modes import ModelShape


@dataclass(frozen=True)
class StepRow:
    """One steered request's tokens in this forward."""

    start: int  # flat index of its first token in this forward
    count: int  # its tokens in this forward
    first_position: int  # position of its first token in its own sequence (tokens computed before)
    prompt_len: int


def _nonzero_rows(*tensors: Tensor | None) -> Tensor | None:
    """[rows] bool: rows where any of the tensors holds a non-zero value (None when none is given)."""
    flags = None
    for tensor in tensors:
        if tensor is None:
            continue
        row_flags = tensor.reshape(tensor.shape[0], -1).ne(0).any(dim=1)
        flags = row_flags if flags is None else flags | row_flags
    return flags


@dataclass(frozen=True)
class LayerPlan:
    """One layer's edits over the steered requests, and which of those requests each kind of op touches."""

    edit: LayerEdit
    at_last: Tensor | None  # [rows] bool: a replace or an add at the last prompt token
    from_last: Tensor | None  # an add from the last prompt token on
    everywhere: Tensor | None  # an add (plain or norm-keeping) at every position
    heads_last: Tensor | None  # a head mix at the last prompt token
    heads_after: Tensor | None  # a head mix at every token after it

    @classmethod
    def of(cls, edit: LayerEdit) -> LayerPlan:
        return cls(
            edit=edit,
            at_last=_nonzero_rows(edit.replace_coef, edit.add_last),
            from_last=_nonzero_rows(edit.add_from_last),
            everywhere=_nonzero_rows(edit.add_all, edit.add_all_norm),
            heads_last=_nonzero_rows(edit.head_coef),
            heads_after=_nonzero_rows(edit.answer_coef),
        )


def build_layer_plans(
    plans: Sequence[Sequence[SteeringTerm]], model: ModelShape, device: torch.device, dtype: torch.dtype
) -> dict[int, LayerPlan]:
    """Per-layer edits of these requests' plans (row i is `plans[i]`); worth caching while the batch holds."""
    return {layer: LayerPlan.of(edit) for layer, edit in row_edits(plans, model, device, dtype).items()}


class StepSteering:
    """The hooks' view of one forward: token indices per layer and the layer's edits."""

    def __init__(self, layers: dict[int, LayerPlan], rows: Sequence[StepRow], device: torch.device) -> None:
        self.layers = layers
        token_rows, positions, prompt_lens, tokens = [], [], [], []
        for i, row in enumerate(rows):
            tokens.append(torch.arange(row.start, row.start + row.count))
            positions.append(torch.arange(row.first_position, row.first_position + row.count))
            token_rows.append(torch.full((row.count,), i, dtype=torch.long))
            prompt_lens.append(torch.full((row.count,), row.prompt_len, dtype=torch.long))
        self.tokens = torch.cat(tokens).to(device)  # flat indices of the steered requests' tokens
        self.rows = torch.cat(token_rows).to(device)  # each one's request (row of the edits)
        position, prompt_len = torch.cat(positions), torch.cat(prompt_lens)
        self.is_last = (position == prompt_len - 1).to(device)
        self.from_last = (position >= prompt_len - 1).to(device)
        self.after = (position >= prompt_len).to(device)
        self._residual_tokens: dict[int, Tensor | None] = {}
        self._head_tokens: dict[int, Tensor | None] = {}

    def _select(self, *pairs: tuple[Tensor | None, Tensor | None]) -> Tensor | None:
        """Indices (into `self.tokens`) where a (row flags, token mask) pair holds; a None mask: every token."""
        chosen = None
        for row_flags, token_mask in pairs:
            if row_flags is None:
                continue
            hit = row_flags[self.rows] if token_mask is None else row_flags[self.rows] & token_mask
            chosen = hit if chosen is None else chosen | hit
        if chosen is None or not bool(chosen.any()):
            return None
        return chosen.nonzero().squeeze(1)

    def residual_tokens(self, layer: int) -> Tensor | None:
        if layer not in self._residual_tokens:
            plan = self.layers[layer]
            self._residual_tokens[layer] = self._select(
                (plan.at_last, self.is_last), (plan.from_last, self.from_last), (plan.everywhere, None)
            )
        return self._residual_tokens[layer]

    def head_tokens(self, layer: int) -> Tensor | None:
        if layer not in self._head_tokens:
            plan = self.layers[layer]
            self._head_tokens[layer] = self._select((plan.heads_last, self.is_last), (plan.heads_after, self.after))
        return self._head_tokens[layer]

    def edit_residual(self, layer: int, hidden: Tensor, residual: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """A decoder layer's output. vLLM keeps the stream as (hidden, residual) with the sum pending: edited
        tokens get their whole new state in `hidden` and a zero `residual`."""
        if layer not in self.layers or (picked := self.residual_tokens(layer)) is None:
            return hidden, residual
        edit = self.layers[layer].edit
        flat, rows = self.tokens[picked], self.rows[picked]
        state = hidden[flat] if residual is None else hidden[flat] + residual[flat]
        if edit.replace_coef is not None or edit.add_last is not None:
            last = self.is_last[picked][:, None]
            row = state
            if edit.replace_coef is not None:
                row = replace_state(row, edit.replace_coef[rows], edit.replace_target[rows])
            if edit.add_last is not None:
                row = row + edit.add_last[rows]
            state = torch.where(last, row, state)
        if edit.add_from_last is not None:
            state = torch.where(self.from_last[picked][:, None], state + edit.add_from_last[rows], state)
        if edit.add_all is not None:
            state = state + edit.add_all[rows]
        if edit.add_all_norm is not None:
            shifted = add_keeping_norm(state, edit.add_all_norm[rows])
            state = torch.where(edit.norm_rows[rows][:, None], shifted, state)
        hidden = hidden.clone()
        hidden[flat] = state
        if residual is not None:
            residual = residual.clone()
            residual[flat] = 0
        return hidden, residual

    def edit_heads(self, layer: int, heads: Tensor) -> Tensor | None:
        """The attention output projection's input ([tokens, this rank's heads × head_dim]), or None: unchanged."""
        if layer not in self.layers or (picked := self.head_tokens(layer)) is None:
            return None
        edit = self.layers[layer].edit
        flat, rows = self.tokens[picked], self.rows[picked]
        z = heads[flat].reshape(len(flat), -1, heads.shape[-1] // self._heads(edit))
        if edit.head_coef is not None:
            mixed = mix_heads(z, edit.head_coef[rows], edit.head_target[rows])
            z = torch.where(self.is_last[picked][:, None, None], mixed, z)
        if edit.answer_coef is not None:
            mixed = mix_heads(z, edit.answer_coef[rows], edit.answer_target[rows])
            z = torch.where(self.after[picked][:, None, None], mixed, z)
        heads = heads.clone()
        heads[flat] = z.reshape(len(flat), -1)
        return heads

    @staticmethod
    def _heads(edit: LayerEdit) -> int:
        coef = edit.head_coef if edit.head_coef is not None else edit.answer_coef
        assert coef is not None
        return coef.shape[1]
