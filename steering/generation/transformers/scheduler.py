"""Iteration-level scheduling: rows join a running batch at the next step and leave the moment they end.

`Scheduler.step()` is one iteration: at most one prefill chunk for newcomers, then one decode step for
every running row. Newcomers are prefilled in their own left-padded group, each row with its own full
steering plan, so every row gets its vectors at its own last prompt token; a group holds the newcomers
whose padded prompts fit in `prefill_chunk_tokens`, and a longer prompt is prefilled in chunks of that
size, one per iteration, so running rows wait at most one chunk per step. When a group's prefill ends,
its rows sample their first token and their KV cache joins the running batch (`kvbatch`).

Decode steps carry, per row, only the terms that act past the prompt (`inject.DECODE_MODES`): a batch
of task vectors decodes with no hooks at all. A row that ends (stop string, end token, length, cancel,
non-finite logits) leaves the batch at once and its cache columns are dropped.

Short requests go first. Rows asking for at most `priority_new_tokens` run in a batch of their own (the
priority lane), prefilled before other newcomers and decoded while the other rows wait, at most
`MAX_BULK_PAUSE` steps in a row. On a CPU this is what keeps a short answer near its idle latency: a step
costs the same for 2 rows as for 4, and 1.7x more than for 1 row alone (SmolLM2-135M, 2 cores), so
joining a busy batch would make every step of a short answer slower. On a GPU, where rows are nearly free,
set it to 0: one lane.

This is the transformers engine's one decode loop. How rows are admitted is the caller's policy:
`ContinuousBackend` adds newcomers before every step; a static batch (`Scheduler.static`, used by
`Engine.generate` and `StaticBackend`) adds its rows once, prefills them in one group and one pass, decodes
them in one lane and adds nobody until the last has ended; a backend retries a row alone by adding it by
itself to its own scheduler.

The caller holds the model's lock around each `step()`; between steps the model is free.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field

import torch
from torch import Tensor
from transformers import DynamicCache

from steering.generation.rows import FinishReason, GenerationRequest, GenerationResult, RowState, sample_step
from steering.generation.transformers.kvbatch import KVBatch, join, keep_rows
from steering.generation.transformers.tokens import ModelTokens, left_pad, positions_from_mask
from steering.steer.inject import BatchSteering, decode_terms, maybe_attached
from steering.steer.prefix import Term, prefix_term, prefixed_cache

DEFAULT_PREFILL_CHUNK_TOKENS = 256
DEFAULT_PRIORITY_NEW_TOKENS = 16
MAX_BULK_PAUSE = 16  # priority-lane steps in a row before the other lane gets one
UNCHUNKED = sys.maxsize  # a prefill group takes every newcomer and prefills their whole prompts in one pass
PRIORITY, BULK = 0, 1


@dataclass
class RowUpdate:
    """What one step did for one row: new text, and its result when the row ended."""

    key: Hashable
    text: str
    result: GenerationResult | None = None


@dataclass
class _Row:
    key: Hashable
    state: RowState
    lane: int
    added_at: float = field(default_factory=time.perf_counter)

    @property
    def request(self) -> GenerationRequest:
        return self.state.request


@dataclass
class _Prefill:
    """Newcomers being prefilled together, `done` of their padded prompt columns so far."""

    rows: list[_Row]
    lane: int
    ids: Tensor
    mask: Tensor
    positions: Tensor
    steering: BatchSteering | None
    cache: DynamicCache
    done: int = 0
    cached: int = 0  # columns already in `cache` before the prompt (a row's KV prefix); `mask` covers them too


@dataclass
class _Running:
    """Rows past their prompt: their cache, next input token and its position, decode-time steering."""

    rows: list[_Row]
    kv: KVBatch
    tokens: Tensor  # [rows]
    positions: Tensor  # [rows]
    steering: BatchSteering | None = None
    stale: bool = True  # rows changed since `steering` was built


class Scheduler:
    def __init__(
        self,
        engine: ModelTokens,
        *,
        prefill_chunk_tokens: int = DEFAULT_PREFILL_CHUNK_TOKENS,
        priority_new_tokens: int = DEFAULT_PRIORITY_NEW_TOKENS,
    ) -> None:
        self.engine, self.lm = engine, engine.lm
        self.prefill_chunk_tokens = max(1, prefill_chunk_tokens)
        self.priority_new_tokens = priority_new_tokens
        self._waiting: deque[_Row] = deque()
        self._prefill: _Prefill | None = None
        self._lanes: list[_Running | None] = [None, None]
        self._bulk_paused = 0  # priority-lane steps since the bulk lane last decoded

    @classmethod
    def static(cls, engine: ModelTokens) -> Scheduler:
        """For static batches: the rows added before the first step are prefilled together in one pass and
        decode in one lane (they still leave the batch as they end)."""
        return cls(engine, prefill_chunk_tokens=UNCHUNKED, priority_new_tokens=0)

    def __len__(self) -> int:
        """Rows in flight: waiting for prefill, prefilling, or decoding."""
        prefilling = len(self._prefill.rows) if self._prefill else 0
        return len(self._waiting) + prefilling + self.running

    @property
    def running(self) -> int:
        return sum(len(lane.rows) for lane in self._lanes if lane is not None)

    def add(self, key: Hashable, request: GenerationRequest) -> None:
        """Queue a request for the next prefill group. A plan the model cannot take raises here (SteeringError)."""
        if not request.prompt_ids:
            raise ValueError("every request needs at least one prompt token")
        lm = self.lm
        BatchSteering.build([request.steering], lm.arch, 1, lm.device, lm.dtype)
        lane = PRIORITY if request.token_limit() <= self.priority_new_tokens else BULK
        self._waiting.append(_Row(key, RowState(request, lm.tokenizer, self.engine.eos_ids), lane))

    def evict(self) -> list[tuple[Hashable, GenerationRequest]]:
        """Every row in flight, out (after a step raised: the cache may be half updated)."""
        rows = list(self._prefill.rows if self._prefill else [])
        for lane in self._lanes:
            rows += lane.rows if lane is not None else []
        rows += self._waiting
        self._waiting.clear()
        self._prefill, self._lanes = None, [None, None]
        return [(row.key, row.request) for row in rows]

    def step(self) -> list[RowUpdate]:
        updates = self._drop_cancelled()
        if self._prefill is None and self._waiting:
            self._prefill = self._start_prefill()
        with torch.inference_mode():
            if self._prefill is not None:
                updates += self._prefill_chunk()
            lane = self._lane_to_decode()
            if lane is not None:
                updates += self._decode(lane)
        return updates

    def _lane_to_decode(self) -> int | None:
        priority, bulk = self._lanes
        if priority is not None and (bulk is None or self._bulk_paused < MAX_BULK_PAUSE):
            self._bulk_paused += bulk is not None
            return PRIORITY
        self._bulk_paused = 0
        return BULK if bulk is not None else None

    # -- rows that end without a step -------------------------------------------------------------

    def _drop_cancelled(self) -> list[RowUpdate]:
        updates = []
        for row in [r for r in self._waiting if _cancelled(r)]:
            self._waiting.remove(row)
            updates.append(self._end(row, "cancelled"))
        for lane, running in enumerate(self._lanes):
            if running is not None and any(_cancelled(r) for r in running.rows):
                keep = [i for i, r in enumerate(running.rows) if not _cancelled(r)]
                updates += [self._end(r, "cancelled") for r in running.rows if _cancelled(r)]
                self._keep(lane, keep)
        return updates

    def _end(self, row: _Row, reason: FinishReason) -> RowUpdate:
        delta = row.state.end(reason)
        return RowUpdate(row.key, delta.text if delta else "", row.state.result(row.added_at, time.perf_counter()))

    # -- prefill ----------------------------------------------------------------------------------

    def _start_prefill(self) -> _Prefill:
        """The next group: the oldest newcomer of the first lane that has one, and more of that lane that fit. A
        row with a KV prefix is prefilled alone, so that its prefix and prompt are contiguous cache columns."""
        lane = min(row.lane for row in self._waiting)
        waiting = [r for r in self._waiting if r.lane == lane]
        if self._prefix_of(waiting[0]) is not None:
            self._waiting.remove(waiting[0])
            return self._prefixed_group(waiting[0])
        rows: list[_Row] = []
        width = 0
        for row in waiting:
            if self._prefix_of(row) is not None:
                continue
            wider = max(width, len(row.request.prompt_ids))
            if rows and (len(rows) + 1) * wider > self.prefill_chunk_tokens:
                break
            rows.append(row)
            self._waiting.remove(row)
            width = wider
        lm = self.lm
        ids, mask = left_pad([r.request.prompt_ids for r in rows], self.engine.pad_id, lm.device)
        plans = [r.request.steering for r in rows]
        steering = BatchSteering.build(plans, lm.arch, ids.shape[1], lm.device, lm.dtype)
        cache = DynamicCache(config=lm.model.config)
        return _Prefill(rows, lane, ids, mask, positions_from_mask(mask), steering, cache)

    def _prefix_of(self, row: _Row) -> Term | None:
        return prefix_term(row.request.steering, self.lm.arch)

    def _prefixed_group(self, row: _Row) -> _Prefill:
        """One row whose cache starts with its KV prefix; its prompt's positions count on from the prefix's."""
        lm = self.lm
        term = self._prefix_of(row)
        assert term is not None
        cache = prefixed_cache(term, lm.model.config, lm.device, lm.dtype)
        ids, prompt_mask = left_pad([row.request.prompt_ids], self.engine.pad_id, lm.device)
        cached = term.vector.prefix_tokens
        mask = torch.cat([torch.ones_like(prompt_mask[:, :1]).expand(1, cached), prompt_mask], dim=1)
        positions = positions_from_mask(mask)[:, cached:]
        steering = BatchSteering.build([row.request.steering], lm.arch, ids.shape[1], lm.device, lm.dtype)
        return _Prefill([row], row.lane, ids, mask, positions, steering, cache, cached=cached)

    def _prefill_chunk(self) -> list[RowUpdate]:
        group, lm = self._prefill, self.lm
        assert group is not None
        width = group.ids.shape[1]
        end = min(width, group.done + max(1, self.prefill_chunk_tokens // len(group.rows)))
        if group.steering is not None:
            group.steering.offset = group.done
        with maybe_attached(group.steering, lm.arch):
            out = lm.model(
                input_ids=group.ids[:, group.done : end],
                attention_mask=group.mask[:, : group.cached + end],
                position_ids=group.positions[:, group.done : end],
                **lm.arch.cache_argument(group.cache),
                use_cache=True,
                logits_to_keep=1,
            )
        group.done = end
        if end < width:
            return []
        self._prefill = None
        updates, tokens = self._sample(group.rows, out.logits[:, -1])
        keep = [i for i, row in enumerate(group.rows) if row.state.finish is None]
        if keep:
            kv = KVBatch(group.cache, group.mask)
            index = torch.tensor(keep, device=lm.device)
            if len(keep) < len(group.rows):
                kv = keep_rows(kv, index)
            joined = _Running(
                [group.rows[i] for i in keep],
                kv,
                torch.tensor([tokens[i] for i in keep], device=lm.device),
                group.mask.sum(-1).index_select(0, index),
            )
            self._join(group.lane, joined)
        return updates

    def _join(self, lane: int, newcomers: _Running) -> None:
        running = self._lanes[lane]
        if running is None:
            self._lanes[lane] = newcomers
            return
        running.kv = join(running.kv, newcomers.kv)
        running.rows += newcomers.rows
        running.tokens = torch.cat([running.tokens, newcomers.tokens])
        running.positions = torch.cat([running.positions, newcomers.positions])
        running.stale = True

    # -- decode -----------------------------------------------------------------------------------

    def _decode(self, lane: int) -> list[RowUpdate]:
        running, lm = self._lanes[lane], self.lm
        assert running is not None
        if running.stale:
            plans = [decode_terms(row.request.steering) for row in running.rows]
            running.steering = BatchSteering.build(plans, lm.arch, 1, lm.device, lm.dtype)
            if running.steering is not None:
                running.steering.offset = 1  # past every row's last prompt token
            running.stale = False
        mask = torch.cat([running.kv.mask, torch.ones_like(running.kv.mask[:, :1])], dim=1)
        with maybe_attached(running.steering, lm.arch):
            out = lm.model(
                input_ids=running.tokens[:, None],
                attention_mask=mask,
                position_ids=running.positions[:, None],
                **lm.arch.cache_argument(running.kv.cache),
                use_cache=True,
                logits_to_keep=1,
            )
        running.kv.mask = mask
        running.positions = running.positions + 1
        updates, tokens = self._sample(running.rows, out.logits[:, -1])
        running.tokens = torch.tensor(tokens, device=lm.device)
        keep = [i for i, row in enumerate(running.rows) if row.state.finish is None]
        if len(keep) < len(running.rows):
            self._keep(lane, keep)
        return updates

    def _keep(self, lane: int, keep: list[int]) -> None:
        running = self._lanes[lane]
        assert running is not None
        if not keep:
            self._lanes[lane] = None
            return
        index = torch.tensor(keep, device=self.lm.device)
        running.kv = keep_rows(running.kv, index)
        running.rows = [running.rows[i] for i in keep]
        running.tokens = running.tokens.index_select(0, index)
        running.positions = running.positions.index_select(0, index)
        running.stale = True

    def _sample(self, rows: list[_Row], logits: Tensor) -> tuple[list[RowUpdate], list[int]]:
        """Each row's next token (pad for rows that ended) and the updates of rows with news."""
        tokens, deltas = sample_step(logits, [r.state for r in rows], self.engine.pad_id)
        updates = []
        for row, delta in zip(rows, deltas, strict=True):
            if row.state.finish is not None:
                result = row.state.result(row.added_at, time.perf_counter())
                updates.append(RowUpdate(row.key, delta.text if delta else "", result))
            elif delta is not None and delta.text:
                updates.append(RowUpdate(row.key, delta.text))
        return updates, tokens


def _cancelled(row: _Row) -> bool:
    cancel = row.request.cancel
    return cancel is not None and cancel.is_set()
