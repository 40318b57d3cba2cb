"""The injection modes: one entry per mode says everything the rest of the library needs to know about it.

A vector's `mode` names an entry of `MODES`. `steering.vectors.task_vector` reads it for the tensors a vector must
hold and their shapes on a model (`check_for_model`), `steering.steer.inject` for the op its hooks apply, where
and at which positions, the schedulers (through `inject.DECODE_MODES`) for whether it still acts
while decoding, and `steering.vectors.export` for whether it exports as a GGUF control vector. A method picks a
mode by name; a new mode is a new entry here (and, for a new op, its hook code in `steering.steer.inject`).

One mode edits no activation: `kv_prefix` holds keys and values that go in a row's KV cache before its prompt
(the transformers engine: `steering.steer.prefix`; vLLM: `steering.generation.vllm.kv_prefix`), a trained
stand-in for a few-shot prompt (Context Tuning, arXiv 2507.04221). Its tensors' length is the prefix's, so its
shapes fix every dimension but that one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

Op = Literal["add", "add_norm", "replace", "head_mix", "kv_prefix"]
Positions = Literal["last", "from_last", "all", "before"]  # before: cache columns ahead of the prompt
Site = Literal["residual", "heads", "cache"]
MAX_PREFIX_TOKENS = 2048  # a KV prefix's length, at most: about a long prompt's


class ModelShape(Protocol):
    """What a vector's shapes depend on (`steering.model.arch.Architecture` has it)."""

    @property
    def num_layers(self) -> int: ...

    hidden_size: int
    num_heads: int
    head_dim: int
    num_kv_heads: int  # key/value heads of the attention (fewer than `num_heads` with grouped queries)


# Every tensor a vector may hold, and its shape on a model with a KV prefix of `tokens` (one row per decoder layer).
TENSOR_SHAPES: Mapping[str, Callable[[ModelShape, int], tuple[int, ...]]] = {
    "residual": lambda m, _: (m.num_layers, m.hidden_size),
    "head_means": lambda m, _: (m.num_layers, m.num_heads, m.head_dim),
    "gate_logits": lambda m, _: (m.num_layers, m.num_heads),
    "head_scores": lambda m, _: (m.num_layers, m.num_heads),
    # Soft injection's second mix, for the answer's tokens after the first (`head_mix_answer`).
    "answer_head_means": lambda m, _: (m.num_layers, m.num_heads, m.head_dim),
    "answer_gate_logits": lambda m, _: (m.num_layers, m.num_heads),
    # A KV prefix: each layer's keys (after their rotary embedding) and values, as the model's cache holds them.
    "prefix_keys": lambda m, tokens: (m.num_layers, m.num_kv_heads, tokens, m.head_dim),
    "prefix_values": lambda m, tokens: (m.num_layers, m.num_kv_heads, tokens, m.head_dim),
}
PREFIX_TENSORS = ("prefix_keys", "prefix_values")
TENSOR_NAMES: tuple[str, ...] = tuple(TENSOR_SHAPES)


@dataclass(frozen=True)
class InjectionModeSpec:
    """One injection mode: what its hook does, where, with which tensors, and what `strength` means there."""

    name: str
    # add: h + s·v; add_norm: h + s·v rescaled to |h|; replace: (1-s)·h + s·v; head_mix: per-head gates;
    # kv_prefix: cached keys and values ahead of the prompt
    op: Op
    # residual: the output of a decoder layer; heads: the input of a layer's attention out-projection; cache: the
    # KV cache (no hook)
    site: Site
    positions: Positions  # the last prompt token, it and every later token, every position, or before the prompt
    tensors: tuple[str, ...]  # what a vector of this mode holds (names of TENSOR_SHAPES); the first counts layers
    edit_fields: tuple[str, ...]  # the `inject.LayerEdit` fields its op fills, one [batch, ...] tensor each
    # One residual row added per layer, the only shape a GGUF control vector has (llama.cpp adds it at every
    # position without rescaling: position rules and the norm rescaling are lost in the file).
    gguf: bool
    strength: str  # what `strength` means for this mode

    @property
    def acts_while_decoding(self) -> bool:
        """Whether a hook still changes anything once a row is past its last prompt token (a KV prefix is in the
        row's cache by then)."""
        return self.positions not in ("last", "before")


HEAD_MIX_TENSORS = ("head_means", "gate_logits")
ANSWER_MIX_TENSORS = ("answer_head_means", "answer_gate_logits")


def _mode(
    name: str, op: Op, positions: Positions, edit_fields: tuple[str, ...], gguf: bool, strength: str
) -> InjectionModeSpec:
    heads = op == "head_mix"
    tensors = ("residual",)
    if heads:  # a head mix acting past the prompt mixes the answer's tokens with means of their own
        tensors = HEAD_MIX_TENSORS + (ANSWER_MIX_TENSORS if positions == "from_last" else ())
    return InjectionModeSpec(
        name=name,
        op=op,
        site="heads" if heads else "residual",
        positions=positions,
        tensors=tensors,
        edit_fields=edit_fields,
        gguf=gguf,
        strength=strength,
    )


_MULTIPLIER = "a multiplier of the vector (any sign)"
# In the order of the `mode` field's accepted values.
MODES: Mapping[str, InjectionModeSpec] = {
    spec.name: spec
    for spec in (
        _mode("add_all", "add", "all", ("add_all",), True, _MULTIPLIER),
        _mode(
            "add_all_norm",
            "add_norm",
            "all",
            ("add_all_norm", "norm_rows"),
            True,
            "a multiplier of the vector added before each state is rescaled to its own norm",
        ),
        _mode("add_from_last", "add", "from_last", ("add_from_last",), True, _MULTIPLIER),
        _mode("add_last", "add", "last", ("add_last",), True, _MULTIPLIER),
        _mode(
            "replace_last",
            "replace",
            "last",
            ("replace_coef", "replace_target"),
            False,
            "an interpolation weight: h <- (1 - s)·h + s·v (1 replaces the state)",
        ),
        _mode(
            "head_mix_last",
            "head_mix",
            "last",
            ("head_coef", "head_target"),
            False,
            "a scale of the learned gates a = sigmoid(g)·s, each head mixed as (1 - a)·z + a·mean",
        ),
        _mode(
            "head_mix_answer",
            "head_mix",
            "from_last",
            ("head_coef", "head_target", "answer_coef", "answer_target"),
            False,
            "a scale of both learned gate sets: head_mix_last's at the last prompt token, and at every later token "
            "a = sigmoid(answer_g)·s mixing each head as (1 - a)·z + a·answer_mean",
        ),
        InjectionModeSpec(
            name="kv_prefix",
            op="kv_prefix",
            site="cache",
            positions="before",
            tensors=PREFIX_TENSORS,
            edit_fields=(),
            gguf=False,
            strength="a multiplier of the prefix's values (1: as trained); its keys, and so where attention goes, "
            "are unchanged",
        ),
    )
}
MODE_NAMES: tuple[str, ...] = tuple(MODES)
InjectionMode = Literal[MODE_NAMES]  # type: ignore[valid-type]  # the accepted values, from the table

# The modes whose hooks edit activations; the other (`kv_prefix`) goes in the row's KV cache.
ACTIVATION_MODE_NAMES: tuple[str, ...] = tuple(name for name, spec in MODES.items() if spec.site != "cache")
DECODE_MODES: frozenset[str] = frozenset(name for name, spec in MODES.items() if spec.acts_while_decoding)
GGUF_EXPORTABLE_MODES: tuple[str, ...] = tuple(name for name, spec in MODES.items() if spec.gguf)
RESIDUAL_EDIT_FIELDS: tuple[str, ...] = tuple(
    f for spec in MODES.values() if spec.site == "residual" for f in spec.edit_fields
)


def mode_spec(mode: str) -> InjectionModeSpec:
    if mode not in MODES:
        raise ValueError(f"unknown injection mode {mode!r}")
    return MODES[mode]


def expected_shapes(model: ModelShape, prefix_tokens: int = 1) -> dict[str, tuple[int, ...]]:
    """The shape each tensor of a vector must have on `model` (a KV prefix's: with `prefix_tokens` columns)."""
    return {name: shape(model, prefix_tokens) for name, shape in TENSOR_SHAPES.items()}
