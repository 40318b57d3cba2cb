"""KV prefixes (`kv_prefix`, context tuning's vectors) on vLLM: the prefix's columns written over placeholders.

The transformers engine starts a row's cache from the prefix's keys and values and counts the prompt's
positions on from it (`steering.steer.prefix`). vLLM has no way to put keys and values into a request's paged
cache, but it computes and caches every prompt token's own. So the front end puts `prefix_tokens` placeholder
tokens ahead of the prompt, and a forward pre-hook on every attention layer replaces those tokens' keys (after
their rotary embedding, as the cache holds them and as the prefix was saved) and values with the prefix's,
the values scaled by the term's strength. vLLM then caches exactly the prefix at the positions it was computed
for, and every later token attends to it as the transformers engine's rows do. The placeholders' own hidden
states reach nothing: at every layer their keys and values are replaced, and no token is sampled from them.

The buffers have fixed shapes, so one form serves both ways vLLM runs a model: eager (the hook runs as Python)
and compiled (installed at load, `graph_loader.py`, traced into the graph and replayed by CUDA graphs).

- `keys`/`values[layer, entry, kv_heads·head_dim]`: this rank's key-value heads of every loaded prefix, one
  entry per prefix column, taken from a free list (`PrefixWriter.load`); entry 0 is never given out;
- `token_entry[t]`: the entry whose key and value the t-th token of the forward takes (0: its own);
- `token_scale[t]`: the strength its value is scaled by.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from steering.generation.vllm.token_steering import StepRow
from steering.vectors.task_vector import TaskVector


class PrefixTables(nn.Module):
    """Every loaded prefix of one rank, and which tokens of the current forward take which column."""

    def __init__(
        self,
        *,
        num_layers: int,
        kv_width: int,  # this rank's key-value heads × head_dim
        capacity: int,  # prefix columns held at once, over all prefixes
        max_tokens: int,  # tokens in one forward
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.capacity = capacity
        self.active = False  # placeholders in the forward under way (read by the eager form only)
        kw: dict[str, Any] = {"device": device}
        table = (num_layers, capacity + 1, kv_width)
        self.register_buffer("keys", torch.zeros(table, dtype=dtype, **kw), persistent=False)
        self.register_buffer("values", torch.zeros(table, dtype=dtype, **kw), persistent=False)
        self.register_buffer("token_entry", torch.zeros(max_tokens, dtype=torch.int64, **kw), persistent=False)
        # float32 whatever the model's dtype: the transformers engine scales the values by a Python float
        self.register_buffer("token_scale", torch.zeros(max_tokens, dtype=torch.float32, **kw), persistent=False)

    def replace(self, layer: int, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        """An attention layer's key and value ([tokens, kv_heads·head_dim] or [tokens, kv_heads, head_dim]),
        placeholders' rows replaced."""
        tokens = key.shape[0]
        entry = self.token_entry[:tokens]
        taken = entry.ne(0).unsqueeze(1)
        flat_key, flat_value = key.reshape(tokens, -1), value.reshape(tokens, -1)
        new_key = torch.where(taken, self.keys[layer].index_select(0, entry), flat_key)
        scaled = self.values[layer].index_select(0, entry).float() * self.token_scale[:tokens].unsqueeze(1)
        new_value = torch.where(taken, scaled.to(value.dtype), flat_value)
        return new_key.view_as(key), new_value.view_as(value)


class LayerPrefix(nn.Module):
    """One attention layer's handle on the shared tables (a child module, as `graph_ops.LayerSteering` is)."""

    def __init__(self, tables: PrefixTables, layer: int, eager: bool) -> None:
        super().__init__()
        self.tables, self.layer = tables, layer
        self.eager = eager  # compiled: never branch on the host's flag (the graph would keep one branch)


def prefix_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple, dict] | None:
    """Forward pre-hook (with kwargs) of a vLLM `Attention` layer carrying a `kv_prefix` child."""
    handle: LayerPrefix = module.kv_prefix  # type: ignore[assignment]
    if handle.eager and not handle.tables.active:  # eager: skip the ops in forwards without placeholders
        return None
    positional = len(args) >= 3
    key, value = (args[1], args[2]) if positional else (kwargs.get("key"), kwargs.get("value"))
    if key is None or value is None:  # a layer reading another layer's cache writes none of its own
        return None
    key, value = handle.tables.replace(handle.layer, key, value)
    if positional:
        return (args[0], key, value, *args[3:]), kwargs
    return args, {**kwargs, "key": key, "value": value}


def attention_layers(
    decoder_layers: Sequence[tuple[int, nn.Module]], kv_width: int
) -> list[tuple[int, nn.Module]] | None:
    """Each decoder layer's vLLM `Attention` module (the one that takes rotated keys and writes the cache), or
    None where a KV prefix cannot go: a layer without exactly one, or with keys of another width than the
    prefix's (multi-head latent attention, hybrid layers, per-layer head sizes)."""
    from vllm.model_executor.layers.attention.attention import Attention

    found = []
    for index, layer in decoder_layers:
        modules = [m for m in layer.modules() if isinstance(m, Attention)]
        if len(modules) != 1 or modules[0].num_kv_heads * modules[0].head_size != kv_width:
            return None
        found.append((index, modules[0]))
    return found


def install(
    model: nn.Module, attentions: Sequence[tuple[int, nn.Module]], tables: PrefixTables, *, eager: bool
) -> None:
    """Give the attention layers `attention_layers` found the tables and the pre-hook (before vLLM compiles the
    model, when it does)."""
    model.steering_prefixes = tables
    for index, attention in attentions:
        attention.kv_prefix = LayerPrefix(tables, index, eager)
        attention.register_forward_pre_hook(prefix_hook, with_kwargs=True)


def installed(model: nn.Module) -> PrefixTables | None:
    tables = getattr(model, "steering_prefixes", None)
    return tables if isinstance(tables, PrefixTables) else None


class PrefixWriter:
    """The host's side: which entries each loaded prefix holds, and `token_entry`/`token_scale` per forward."""

    def __init__(self, tables: PrefixTables) -> None:
        self.tables = tables
        self._entries: dict[str, Tensor] = {}  # vector id -> its columns' entries, in order
        self._free = list(range(tables.capacity, 0, -1))
        self._written = 0

    def __contains__(self, vector_id: str) -> bool:
        return vector_id in self._entries

    @torch.no_grad()
    def load(self, vector_id: str, vector: TaskVector) -> None:
        """Write a prefix (already sliced to this rank's key-value heads) into free entries."""
        if vector_id in self._entries:
            return
        tables = self.tables
        flat = {  # [layers, tokens, kv·dim]
            name: vector.tensors[f"prefix_{name}"].permute(0, 2, 1, 3).flatten(2) for name in ("keys", "values")
        }
        tokens = flat["keys"].shape[1]
        if flat["keys"].shape != (tables.keys.shape[0], tokens, tables.keys.shape[2]):
            raise RuntimeError(
                f"a KV prefix of shape {list(vector.tensors['prefix_keys'].shape)} does not fit these tables"
            )
        if tokens > len(self._free):
            raise RuntimeError(f"the prefix tables hold {len(self._free)} more columns, not {tokens}: unload one first")
        entries = torch.tensor([self._free.pop() for _ in range(tokens)])
        at = entries.to(tables.keys.device)
        for name, source in flat.items():
            getattr(tables, name)[:, at] = source.to(tables.keys.device, tables.keys.dtype)
        self._entries[vector_id] = entries

    @torch.no_grad()
    def unload(self, vector_ids: Sequence[str]) -> None:
        for vector_id in vector_ids:
            entries = self._entries.pop(vector_id, None)
            if entries is None:
                continue
            at = entries.to(self.tables.keys.device)
            self.tables.keys[:, at] = 0
            self.tables.values[:, at] = 0
            self._free.extend(int(e) for e in entries.tolist())

    def begin(self, rows: Sequence[tuple[str, float, StepRow]]) -> bool:
        """Point the placeholder tokens of this forward (each steered request's positions below its prefix's
        length) at their entries; False when none is in it."""
        if not rows:
            return False
        end = max(row.start + row.count for _, _, row in rows)
        token_entry = np.zeros(end, dtype=np.int64)
        token_scale = np.zeros(end, dtype=np.float32)
        placed = False
        for vector_id, strength, row in rows:
            entries = self._entries.get(vector_id)
            if entries is None:  # the front end loads every vector before a plan names it: a bug
                raise RuntimeError(f"KV prefix {vector_id} is not loaded on this rank")
            first, last = row.first_position, min(row.first_position + row.count, len(entries))
            if first >= last:
                continue
            span = slice(row.start, row.start + last - first)
            token_entry[span] = entries[first:last].numpy()
            token_scale[span] = strength
            placed = True
        if placed:
            tables = self.tables
            tables.token_entry[:end].copy_(torch.from_numpy(token_entry))
            tables.token_scale[:end].copy_(torch.from_numpy(token_scale))
            self._written = end
        self.tables.active = placed
        return placed

    def end(self) -> None:
        self.tables.active = False
        if self._written:
            self.tables.token_entry[: self._written].zero_()
            self.tables.token_scale[: self._written].zero_()
            self._written = 0
