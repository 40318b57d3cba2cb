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


def _nonzero_rows(*tensors: Tensor | None) -> tuple[bool, ...] | None:
    """Per row: whether any of the tensors holds a non-zero value there (None when no tensor is given)."""
    flags = None
    for tensor in tensors:
        if tensor is None:
            continue
        row_flags = tensor.reshape(tensor.shape[0], -1).ne(0).any(dim=1)
        flags = row_flags if flags is None else flags | row_flags
    return None if flags is None else tuple(bool(f) for f in flags.tolist())


@dataclass(frozen=True)
class LayerPlan:
    """One layer's edits over the steered requests, and which of those requests each kind of op touches (read
    on the host once per batch composition, so that a step decides what to skip without a device sync)."""

    edit: LayerEdit
    at_last: tuple[bool, ...] | None  # per row: a replace or an add at the last prompt token
    from_last: tuple[bool, ...] | None  # an add from the last prompt token on
    everywhere: tuple[bool, ...] | None  # an add (plain or norm-keeping) at every position
    heads_last: tuple[bool, ...] | None  # a head mix at the last prompt token
    heads_after: tuple[bool, ...] | None  # a head mix at every token after it
    norm_rows: tuple[bool, ...] | None  # rows whose every-position add keeps the norm

    @classmethod
    def of(cls, edit: LayerEdit) -> LayerPlan:
        return cls(
            edit=edit,
            at_last=_nonzero_rows(edit.replace_coef, edit.add_last),
            from_last=_nonzero_rows(edit.add_from_last),
            everywhere=_nonzero_rows(edit.add_all, edit.add_all_norm),
            heads_last=_nonzero_rows(edit.head_coef),
            heads_after=_nonzero_rows(edit.answer_coef),
            norm_rows=None if edit.norm_rows is None else tuple(bool(f) for f in edit.norm_rows.tolist()),
        )


def build_layer_plans(
    plans: Sequence[Sequence[SteeringTerm]], model: ModelShape, device: torch.device, dtype: torch.dtype
) -> dict[int, LayerPlan]:
    """Per-layer edits of these requests' plans (row i is `plans[i]`); worth caching while the batch holds."""
    return {layer: LayerPlan.of(edit) for layer, edit in row_edits(plans, model, device, dtype).items()}


_Mask = str  # which tokens of a row a rule takes: "last", "from_last", "after" or "all"
_ALL = slice(None)  # every token of the forward, in order


class StepSteering:
    """The hooks' view of one forward: which of its tokens each layer edits, and the layer's edits.

    What can be read from the rows' positions is decided on the host (`any_last`, `all_after`, ...), and a
    selection of tokens is shared by every layer whose rule is the same, so a decode step costs a few tensor ops
    per steered layer. Every op skipped this way is one that would have changed nothing."""

    def __init__(self, layers: dict[int, LayerPlan], rows: Sequence[StepRow], device: torch.device) -> None:
        self.layers = layers
        tokens: list[int] = []
        token_rows: list[int] = []
        positions: list[int] = []
        prompt_lens: list[int] = []
        for i, row in enumerate(rows):
            tokens.extend(range(row.start, row.start + row.count))
            positions.extend(range(row.first_position, row.first_position + row.count))
            token_rows.extend([i] * row.count)
            prompt_lens.extend([row.prompt_len] * row.count)
        self.tokens = torch.tensor(tokens, device=device)  # flat indices of the steered requests' tokens
        self.rows = torch.tensor(token_rows, device=device)  # each one's request (row of the edits)
        position, prompt_len = torch.tensor(positions), torch.tensor(prompt_lens)
        self.masks: dict[_Mask, Tensor] = {
            "last": (position == prompt_len - 1).to(device),
            "from_last": (position >= prompt_len - 1).to(device),
            "after": (position >= prompt_len).to(device),
        }
        self.any_last = any(r.first_position <= r.prompt_len - 1 < r.first_position + r.count for r in rows)
        self.all_from_last = all(r.first_position >= r.prompt_len - 1 for r in rows)
        self.all_after = all(r.first_position >= r.prompt_len for r in rows)
        self.covered = tokens == list(range(len(tokens)))  # the steered tokens are the forward's first ones
        self._row_flags: dict[tuple[bool, ...], Tensor] = {}
        self._selections: dict[tuple[tuple[tuple[bool, ...], _Mask], ...], Tensor | slice | None] = {}

    def _per_token(self, flags: tuple[bool, ...]) -> Tensor:
        """[steered tokens] bool: the flag of each token's row."""
        if flags not in self._row_flags:
            self._row_flags[flags] = torch.tensor(flags, device=self.rows.device)[self.rows]
        return self._row_flags[flags]

    def _holds(self, mask: _Mask) -> bool | None:
        """True where the rule takes every steered token, False where none, None where it depends on the token."""
        if mask == "all":
            return True
        if mask == "last":
            return None if self.any_last else False
        everywhere = self.all_from_last if mask == "from_last" else self.all_after
        return True if everywhere else None

    def _select(self, *rules: tuple[tuple[bool, ...] | None, _Mask]) -> Tensor | slice | None:
        """Positions in `self.tokens` taken by any (row flags, token mask) rule: `_ALL` for all of them, None
        for none."""
        key = tuple((flags, mask) for flags, mask in rules if flags is not None and any(flags))
        if key in self._selections:
            return self._selections[key]
        chosen: Tensor | None = None
        every = False
        for flags, mask in key:
            holds = self._holds(mask)
            if holds is False:
                continue
            if holds and all(flags):
                every = True
                break
            hit = self._per_token(flags) if holds else self._per_token(flags) & self.masks[mask]
            chosen = hit if chosen is None else chosen | hit
        picked: Tensor | slice | None
        if every:
            picked = _ALL
        elif chosen is None or not bool(chosen.any()):
            picked = None
        else:
            picked = chosen.nonzero().squeeze(1)
        self._selections[key] = picked
        return picked

    def _token_mask(self, mask: _Mask, picked: Tensor | slice) -> Tensor | None:
        """[picked tokens, 1] bool for `torch.where`, or None where the mask holds for every steered token."""
        if self._holds(mask):
            return None
        return self.masks[mask][picked][:, None]

    def edit_residual(self, layer: int, hidden: Tensor, residual: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """A decoder layer's output. vLLM keeps the stream as (hidden, residual) with the sum pending: edited
        tokens get their whole new state in `hidden` and a zero `residual`."""
        plan = self.layers.get(layer)
        if plan is None:
            return hidden, residual
        picked = self._select((plan.at_last, "last"), (plan.from_last, "from_last"), (plan.everywhere, "all"))
        if picked is None:
            return hidden, residual
        edit = plan.edit
        whole = picked is _ALL and self.covered and len(self.tokens) == hidden.shape[0]
        flat, rows = self.tokens[picked], self.rows[picked]
        if whole:
            state = hidden if residual is None else hidden + residual
        else:
            state = hidden[flat] if residual is None else hidden[flat] + residual[flat]
        if self.any_last and (edit.replace_coef is not None or edit.add_last is not None):
            row = state
            if edit.replace_coef is not None:
                row = replace_state(row, edit.replace_coef[rows], edit.replace_target[rows])
            if edit.add_last is not None:
                row = row + edit.add_last[rows]
            state = torch.where(self.masks["last"][picked][:, None], row, state)
        if edit.add_from_last is not None:
            shifted = state + edit.add_from_last[rows]
            mask = self._token_mask("from_last", picked)
            state = shifted if mask is None else torch.where(mask, shifted, state)
        if edit.add_all is not None:
            state = state + edit.add_all[rows]
        if edit.add_all_norm is not None:
            shifted = add_keeping_norm(state, edit.add_all_norm[rows])
            if plan.norm_rows is not None and all(plan.norm_rows):
                state = shifted
            else:
                state = torch.where(edit.norm_rows[rows][:, None], shifted, state)
        if whole:
            return state, None if residual is None else torch.zeros_like(residual)
        hidden = hidden.clone()
        hidden[flat] = state
        if residual is not None:
            residual = residual.clone()
            residual[flat] = 0
        return hidden, residual

    def edit_heads(self, layer: int, heads: Tensor) -> Tensor | None:
        """The attention output projection's input ([tokens, this rank's heads × head_dim]), or None: unchanged."""
        plan = self.layers.get(layer)
        if plan is None:
            return None
        picked = self._select((plan.heads_last, "last"), (plan.heads_after, "after"))
        if picked is None:
            return None
        edit = plan.edit
        whole = picked is _ALL and self.covered and len(self.tokens) == heads.shape[0]
        flat, rows = self.tokens[picked], self.rows[picked]
        z = (heads if whole else heads[flat]).reshape(len(rows), -1, heads.shape[-1] // self._heads(edit))
        if self.any_last and edit.head_coef is not None:
            mixed = mix_heads(z, edit.head_coef[rows], edit.head_target[rows])
            z = torch.where(self.masks["last"][picked][:, None, None], mixed, z)
        if edit.answer_coef is not None:
            mixed = mix_heads(z, edit.answer_coef[rows], edit.answer_target[rows])
            mask = self._token_mask("after", picked)
            z = mixed if mask is None else torch.where(mask[:, :, None], mixed, z)
        if whole:
            return z.reshape(len(rows), -1)
        heads = heads.clone()
        heads[flat] = z.reshape(len(flat), -1)
        return heads

    @staticmethod
    def _heads(edit: LayerEdit) -> int:
        coef = edit.head_coef if edit.head_coef is not None else edit.answer_coef
        assert coef is not None
        return coef.shape[1]
