"""A row's KV prefix (`kv_prefix` vectors): the term that carries one, and the cache a row starts from.

A KV prefix is a few-shot prompt's keys and values, trained (`steering.methods.context_tuning`): the transformers
engine puts them in the row's cache ahead of its prompt, whose positions then count from the prefix's length, as
if the prompt followed the demonstrations (vLLM writes them over placeholder tokens instead,
`steering.generation.vllm.kv_prefix`). A row takes one, on every layer (several tasks' prefixes are composed into
one first, `steering.steer.prefix_compose`); `strength` scales its values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from transformers import DynamicCache, PretrainedConfig

from steering.vectors.modes import ModelShape, mode_spec
from steering.vectors.task_vector import TaskVector


class Term(Protocol):
    """What this module reads of a `steering.steer.inject.SteeringTerm`."""

    @property
    def vector(self) -> TaskVector: ...
    @property
    def strength(self) -> float: ...
    @property
    def layers(self) -> tuple[int, ...] | None: ...


class PrefixError(ValueError):
    """A plan whose KV prefix cannot be applied (two in one row, a layer override, another model's shape)."""


def is_prefix(term_mode: str) -> bool:
    return mode_spec(term_mode).site == "cache"


def carries_prefix(term: Term) -> bool:
    """The term puts a KV prefix ahead of its row's prompt (at strength 0 it puts none)."""
    return term.strength != 0.0 and is_prefix(term.vector.mode)


def prefix_term(terms: Sequence[Term], model: ModelShape) -> Term | None:
    """The row's KV-prefix term (None without one); `PrefixError` for a plan that cannot carry it."""
    found = [t for t in terms if carries_prefix(t)]
    if not found:
        return None
    if len(found) > 1:
        raise PrefixError(
            "a row takes one KV prefix (kv_prefix): compose several first (steering.steer.prefix_compose)"
        )
    term = found[0]
    if term.layers is not None and sorted(set(term.layers)) != list(range(model.num_layers)):
        raise PrefixError("a KV prefix (kv_prefix) covers every layer: its task takes no other `layers`")
    keys = term.vector.tensors["prefix_keys"]
    want = (model.num_layers, model.num_kv_heads, term.vector.prefix_tokens, model.head_dim)
    if tuple(keys.shape) != want or tuple(term.vector.tensors["prefix_values"].shape) != want:
        raise PrefixError(f"the KV prefix has shape {list(keys.shape)}; this model's cache needs {list(want)}")
    return term


def prefixed_cache(term: Term, config: PretrainedConfig, device: torch.device, dtype: torch.dtype) -> DynamicCache:
    """A one-row cache holding the prefix (values scaled by the term's strength)."""
    cache = DynamicCache(config=config)
    keys = term.vector.tensors["prefix_keys"].to(device, dtype)
    values = term.vector.tensors["prefix_values"].to(device, dtype) * float(term.strength)
    for layer in range(keys.shape[0]):
        cache.update(keys[layer][None], values[layer][None], layer)
    return cache
