"""Hooks that inject task vectors, with a separate steering plan for every row of a batch.

All tensors a hook needs are prepared once per batch (`BatchSteering.build`), so a hook call is a
handful of tensor operations. Positions are counted in the left-padded prompt: the last prompt token
sits at index `prompt_len - 1` for every row, which is what keeps padding from moving a vector. Rows
that join a running batch late (`steering.generation.transformers.scheduler`) are prefilled in their own
left-padded group, so
this holds for each group; once every row of a batch is past its prompt, only the `DECODE_MODES` act.
What each injection mode does, where and with which tensors is the table in `steering.vectors.modes`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from steering.model.arch import Architecture
from steering.steer.prefix import PrefixError, prefix_term
from steering.vectors.modes import DECODE_MODES, RESIDUAL_EDIT_FIELDS, InjectionModeSpec, ModelShape, mode_spec
from steering.vectors.task_vector import TaskVector


@dataclass(frozen=True)
class SteeringTerm:
    """One task applied to one row: the vector, its strength, and optionally other layers."""

    vector: TaskVector
    strength: float
    layers: tuple[int, ...] | None = None

    def resolved_layers(self) -> tuple[int, ...]:
        return tuple(self.layers) if self.layers is not None else tuple(self.vector.layers)


def decode_terms(terms: Sequence[SteeringTerm]) -> tuple[SteeringTerm, ...]:
    """The terms of a plan that still change anything once a row is past its last prompt token."""
    return tuple(t for t in terms if t.strength != 0.0 and t.vector.mode in DECODE_MODES)


@dataclass
class LayerEdit:
    """Everything injected at one decoder layer, as [batch, ...] tensors (rows without a term hold zeros).

    Which mode fills which fields is `steering.vectors.modes.MODES` (`edit_fields`).
    """

    replace_coef: Tensor | None = None  # [B, 1]: h <- h * (1 - coef) + replace_target at the last prompt token
    replace_target: Tensor | None = None  # [B, hidden]
    add_last: Tensor | None = None  # [B, hidden], at the last prompt token
    add_from_last: Tensor | None = None  # [B, hidden], at the last prompt token and every later one
    add_all: Tensor | None = None  # [B, hidden], at every position
    add_all_norm: Tensor | None = None  # [B, hidden], at every position, then each state rescaled to its norm
    norm_rows: Tensor | None = None  # [B] bool: rows that take add_all_norm
    all_norm_rows: bool = False  # every row takes it: no per-row selection needed
    head_coef: Tensor | None = None  # [B, heads, 1]: z <- z * (1 - coef) + head_target at the last prompt token
    head_target: Tensor | None = None  # [B, heads, head_dim]
    answer_coef: Tensor | None = None  # [B, heads, 1]: the same mix at every token after the last prompt token
    answer_target: Tensor | None = None  # [B, heads, head_dim]

    @property
    def touches_residual(self) -> bool:
        return any(getattr(self, name) is not None for name in RESIDUAL_EDIT_FIELDS)


class SteeringError(ValueError):
    """A steering plan that cannot be applied to this model (bad layer, wrong vector shape)."""


def replace_state(hidden: Tensor, coef: Tensor, target: Tensor) -> Tensor:
    """`replace`: (1 - s)·h + s·v, with `coef` = s and `target` = s·v."""
    return hidden * (1 - coef) + target


def add_keeping_norm(hidden: Tensor, delta: Tensor) -> Tensor:
    """`add_norm` (ICV): h + delta rescaled to the norm h had (over the last dimension)."""
    norms = torch.linalg.vector_norm(hidden, dim=-1, keepdim=True)
    shifted = hidden + delta
    return shifted * (norms / torch.linalg.vector_norm(shifted, dim=-1, keepdim=True).clamp_min(1e-6))


def mix_heads(heads: Tensor, coef: Tensor, target: Tensor) -> Tensor:
    """`head_mix`: each head z <- (1 - a)·z + a·mean, with `coef` = a and `target` = a·mean ([..., heads, dim])."""
    return heads * (1 - coef) + target


class _EditSums:
    """The `LayerEdit`s of one batch while its rows' terms are summed in, one op of `steering.vectors.modes` each."""

    def __init__(self, batch: int, arch: ModelShape, device: torch.device, dtype: torch.dtype) -> None:
        self.batch, self.arch, self.device, self.dtype = batch, arch, device, dtype
        self.edits: dict[int, LayerEdit] = {}
        self.ops = {"add": self._add, "add_norm": self._add_norm, "replace": self._replace, "head_mix": self._head_mix}

    def add_term(self, spec: InjectionModeSpec, row: int, layer: int, vector: TaskVector, strength: float) -> None:
        self.ops[spec.op](spec, row, layer, vector, strength)

    def _buffer(self, layer: int, name: str, shape: tuple[int, ...]) -> Tensor:
        edit = self.edits.setdefault(layer, LayerEdit())
        tensor = getattr(edit, name)
        if tensor is None:
            tensor = torch.zeros((self.batch, *shape), device=self.device, dtype=self.dtype)
            setattr(edit, name, tensor)
        return tensor

    def _delta(self, vector: TaskVector, layer: int, strength: float) -> Tensor:
        return vector.tensors["residual"][layer].to(self.device, self.dtype) * strength

    def _add(self, spec: InjectionModeSpec, row: int, layer: int, vector: TaskVector, strength: float) -> None:
        (name,) = spec.edit_fields
        self._buffer(layer, name, (self.arch.hidden_size,))[row] += self._delta(vector, layer, strength)

    def _add_norm(self, spec: InjectionModeSpec, row: int, layer: int, vector: TaskVector, strength: float) -> None:
        name, rows_name = spec.edit_fields
        self._buffer(layer, name, (self.arch.hidden_size,))[row] += self._delta(vector, layer, strength)
        edit = self.edits[layer]
        rows = getattr(edit, rows_name)
        if rows is None:
            rows = torch.zeros(self.batch, dtype=torch.bool, device=self.device)
            setattr(edit, rows_name, rows)
        rows[row] = True

    def _replace(self, spec: InjectionModeSpec, row: int, layer: int, vector: TaskVector, strength: float) -> None:
        coef, target = spec.edit_fields
        delta = self._delta(vector, layer, strength)
        self._buffer(layer, coef, (1,))[row] += strength
        self._buffer(layer, target, (self.arch.hidden_size,))[row] += delta

    def _head_mix(self, spec: InjectionModeSpec, row: int, layer: int, vector: TaskVector, strength: float) -> None:
        """One (coef, target) pair of fields per (means, gate logits) pair of tensors the mode holds."""
        arch = self.arch
        fields = spec.edit_fields
        for i, (means_name, gates_name) in enumerate(zip(spec.tensors[::2], spec.tensors[1::2], strict=True)):
            coef, target = fields[2 * i], fields[2 * i + 1]
            gates = torch.sigmoid(vector.tensors[gates_name][layer].float()) * strength
            means = vector.tensors[means_name][layer].float()
            self._buffer(layer, coef, (arch.num_heads, 1))[row] += gates.to(self.device, self.dtype)[:, None]
            self._buffer(layer, target, (arch.num_heads, arch.head_dim))[row] += (gates[:, None] * means).to(
                self.device, self.dtype
            )


def row_edits(
    plans: Sequence[Sequence[SteeringTerm]], model: ModelShape, device: torch.device, dtype: torch.dtype
) -> dict[int, LayerEdit]:
    """Every row's terms summed into per-layer [rows, ...] tensors (row i is `plans[i]`); empty when nothing
    would change. A plan the model cannot take raises `SteeringError`. A KV prefix is checked here but edits no
    activation: the scheduler puts it in the row's cache (`steering.steer.prefix`)."""
    edits = _EditSums(len(plans), model, device, dtype)
    for row, terms in enumerate(plans):
        for term in terms:
            if term.strength == 0.0:
                continue
            vector, strength = term.vector, float(term.strength)
            if vector.num_layers != model.num_layers:
                raise SteeringError("the vector was computed for a model with another layer count")
            spec = mode_spec(vector.mode)
            if spec.site == "cache":
                try:
                    prefix_term(terms, model)
                except PrefixError as exc:
                    raise SteeringError(str(exc)) from None
                continue
            for layer in term.resolved_layers():
                if not 0 <= layer < model.num_layers:
                    raise SteeringError(f"layer {layer} is out of range: the model has {model.num_layers}")
                edits.add_term(spec, row, layer, vector, strength)
    for edit in edits.edits.values():
        edit.all_norm_rows = edit.norm_rows is not None and bool(edit.norm_rows.all())
    return edits.edits


@dataclass
class BatchSteering:
    """Per-layer edits for one batch, and the position bookkeeping its hooks read."""

    edits: dict[int, LayerEdit]
    prompt_len: int
    offset: int = 0  # absolute position of the first token of the current forward's input

    @classmethod
    def build(
        cls,
        plans: Sequence[Sequence[SteeringTerm]],
        arch: Architecture,
        prompt_len: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> BatchSteering | None:
        """Sum every row's terms into per-layer batch tensors; None when nothing would change."""
        edits = row_edits(plans, arch, device, dtype)
        return cls(edits=edits, prompt_len=prompt_len) if edits else None

    @classmethod
    def from_edits(cls, edits: dict[int, LayerEdit], prompt_len: int) -> BatchSteering:
        """For callers that build edits directly (soft-injection training passes gates that need gradients)."""
        return cls(edits=edits, prompt_len=prompt_len)

    def _last_index(self, length: int) -> int | None:
        index = self.prompt_len - 1 - self.offset
        return index if 0 <= index < length else None

    def _residual_hook(self, edit: LayerEdit):
        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            hidden = self.edit_residual(edit, hidden)
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

        return hook

    def edit_residual(self, edit: LayerEdit, hidden: Tensor) -> Tensor:
        length = hidden.shape[1]
        last = self._last_index(length)
        if last is not None and (edit.replace_coef is not None or edit.add_last is not None):
            row = hidden[:, last]
            if edit.replace_coef is not None:
                row = replace_state(row, edit.replace_coef, edit.replace_target)
            if edit.add_last is not None:
                row = row + edit.add_last
            hidden = hidden.clone()
            hidden[:, last] = row
        if edit.add_from_last is not None:
            start = max(self.prompt_len - 1 - self.offset, 0)
            if start < length:
                hidden = torch.cat([hidden[:, :start], hidden[:, start:] + edit.add_from_last[:, None]], dim=1)
        if edit.add_all is not None:
            hidden = hidden + edit.add_all[:, None]
        if edit.add_all_norm is not None:
            shifted = add_keeping_norm(hidden, edit.add_all_norm[:, None])
            hidden = shifted if edit.all_norm_rows else torch.where(edit.norm_rows[:, None, None], shifted, hidden)
        return hidden

    def _head_hook(self, edit: LayerEdit, num_heads: int):
        def hook(module, args):
            heads_in = args[0]
            batch, length, width = heads_in.shape
            last = self._last_index(length)
            after = max(self.prompt_len - self.offset, 0)  # the first position past the last prompt token
            mix_last = last is not None and edit.head_coef is not None
            mix_answer = edit.answer_coef is not None and after < length
            if not (mix_last or mix_answer):
                return None
            mixed = heads_in.clone()  # written into; the mixes read the original (autograd needs it unchanged)
            if mix_last:
                z = heads_in[:, last].reshape(batch, num_heads, width // num_heads)
                mixed[:, last] = mix_heads(z, edit.head_coef, edit.head_target).reshape(batch, width)
            if mix_answer:
                z = heads_in[:, after:].reshape(batch, length - after, num_heads, width // num_heads)
                z = mix_heads(z, edit.answer_coef[:, None], edit.answer_target[:, None])
                mixed[:, after:] = z.reshape(batch, length - after, width)
            return (mixed, *args[1:])

        return hook

    @contextmanager
    def attached(self, arch: Architecture) -> Iterator[BatchSteering]:
        """Hooks live exactly as long as this block, and are removed even when the block raises."""
        handles = []
        try:
            for layer, edit in self.edits.items():
                if edit.head_coef is not None or edit.answer_coef is not None:
                    hook = self._head_hook(edit, arch.num_heads)
                    handles.append(arch.attn_out[layer].register_forward_pre_hook(hook))
                if edit.touches_residual:
                    handles.append(arch.layers[layer].register_forward_hook(self._residual_hook(edit)))
            yield self
        finally:
            for handle in handles:
                handle.remove()


@contextmanager
def maybe_attached(steering: BatchSteering | None, arch: Architecture) -> Iterator[BatchSteering | None]:
    if steering is None:
        yield None
        return
    with steering.attached(arch):
        yield steering
