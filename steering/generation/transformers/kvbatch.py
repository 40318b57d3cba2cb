"""The KV cache of a running batch whose rows come and go: rows prefilled apart join, finished rows leave.

Every row is left-padded: its real columns are contiguous and end at the last column, so a query at the
last column sees exactly the row's own tokens, and a sliding window over the last W columns is the row's
last W tokens. Joining left-pads the narrower side with masked zero columns; leaving selects rows, then
cuts the leading columns that no remaining row uses, so the cache stays as wide as its longest row.

Sliding-window layers keep only their last `window - 1` columns and count every column they have seen
(`cumulative_length`, which the model reads as the number of past tokens); both are kept consistent with
the attention mask, whose width is that count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer


class UnsupportedCache(TypeError):
    """A cache layer type whose rows this module cannot join or drop."""


@dataclass
class KVBatch:
    """A cache and its attention mask [rows, columns] (1 = a real token of that row)."""

    cache: DynamicCache
    mask: Tensor

    @property
    def rows(self) -> int:
        return self.mask.shape[0]

    @property
    def width(self) -> int:
        return self.mask.shape[1]


def check_supported(cache: DynamicCache) -> None:
    for layer in cache.layers:
        if type(layer) not in (DynamicLayer, DynamicSlidingWindowLayer):
            raise UnsupportedCache(f"cannot batch rows of a {type(layer).__name__} cache layer")


def _pad_left(tensor: Tensor, columns: int) -> Tensor:
    """[B, heads, L, d] -> [B, heads, columns, d], the new columns zeros on the left."""
    missing = columns - tensor.shape[-2]
    return tensor if missing <= 0 else F.pad(tensor, (0, 0, missing, 0))


def join(running: KVBatch | None, newcomers: KVBatch) -> KVBatch:
    """Rows of `newcomers` appended after the rows of `running` (which is changed in place and returned)."""
    check_supported(newcomers.cache)
    if running is None:
        return newcomers
    width = max(running.width, newcomers.width)
    for mine, theirs in zip(running.cache.layers, newcomers.cache.layers, strict=True):
        kept = max(mine.keys.shape[-2], theirs.keys.shape[-2])  # a sliding layer keeps fewer than `width`
        mine.keys = torch.cat([_pad_left(mine.keys, kept), _pad_left(theirs.keys, kept)])
        mine.values = torch.cat([_pad_left(mine.values, kept), _pad_left(theirs.values, kept)])
        if isinstance(mine, DynamicSlidingWindowLayer):
            mine.cumulative_length = width
    mask = torch.cat(
        [F.pad(running.mask, (width - running.width, 0)), F.pad(newcomers.mask, (width - newcomers.width, 0))]
    )
    return KVBatch(running.cache, mask)


def keep_rows(batch: KVBatch, rows: Tensor) -> KVBatch:
    """Only `rows` (indices, in that order); columns no kept row uses are cut from the left."""
    mask = batch.mask.index_select(0, rows)
    used = mask.any(dim=0)
    cut = int(used.to(torch.int8).argmax()) if bool(used.any()) else mask.shape[1]
    width = mask.shape[1] - cut
    for layer in batch.cache.layers:
        keys, values = layer.keys.index_select(0, rows), layer.values.index_select(0, rows)
        if isinstance(layer, DynamicSlidingWindowLayer):
            layer.cumulative_length = width
            kept = min(keys.shape[-2], max(width, 0), layer.sliding_window - 1)
        else:
            kept = width
        start = keys.shape[-2] - kept
        layer.keys, layer.values = keys[:, :, start:], values[:, :, start:]
    return KVBatch(batch.cache, mask[:, cut:])
