"""Batched generation where every row carries its own steering plan.

One left-padded prefill, then one token per step with the KV cache (or, for checking, without it).
Each row has its own sampling settings and random generator, so a row's tokens do not depend on
which other rows share its batch. A per-step callback streams text deltas.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor
from transformers import DynamicCache

from steering.inject import BatchSteering, SteeringTerm, maybe_attached
from steering.model import LoadedModel

FinishReason = Literal["stop", "length", "cancelled", "error"]


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    steering: Sequence[SteeringTerm] = ()
    max_new_tokens: int = 32
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: Sequence[str] = ()
    cancel: threading.Event | None = None


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    prompt_tokens: int
    timing: dict[str, float] = field(default_factory=dict)
    error: str | None = None  # why the row failed (finish_reason "error"); the other rows are unaffected


class GenerationFailed(RuntimeError):
    """One request's generation could not go on (see `GenerationResult.error`)."""


@dataclass
class RowDelta:
    """New text of one row after a step; `finish_reason` is set on the row's last delta."""

    row: int
    text: str
    finish_reason: FinishReason | None = None


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[Tensor, Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        if seq:
            ids[i, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[i, width - len(seq) :] = 1
    return ids.to(device), mask.to(device)


def positions_from_mask(mask: Tensor) -> Tensor:
    """Padding gets position 0, real tokens count from 0, as transformers does during generation."""
    return (mask.cumsum(-1) - 1).clamp_min(0)


class _RowState:
    def __init__(self, request: GenerationRequest, tokenizer, eos_ids: set[int]) -> None:
        self.request = request
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.ids: list[int] = []
        self.text = ""
        self.emitted = 0
        self.finish: FinishReason | None = None
        self.first_token_at: float | None = None
        self.error: str | None = None
        seed = request.seed if request.seed is not None else random.getrandbits(63)
        self.generator = torch.Generator().manual_seed(seed)
        self.hold = max((len(s) for s in request.stop), default=1) - 1

    def push(self, token: int) -> RowDelta | None:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        if self.request.cancel is not None and self.request.cancel.is_set():
            self.finish = "cancelled"
        elif token in self.eos_ids:
            self.finish = "stop"
        else:
            self.ids.append(token)
            self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
            cut = self._stop_index()
            if cut is not None:
                self.text, self.finish = self.text[:cut], "stop"
            elif len(self.ids) >= self.request.max_new_tokens:
                self.finish = "length"
        return self._delta()

    def fail(self, error: str) -> RowDelta:
        self.error, self.finish = error, "error"
        return RowDelta(0, "", "error")

    def _stop_index(self) -> int | None:
        found = [i for i in (self.text.find(s, max(self.emitted - len(s), 0)) for s in self.request.stop) if i >= 0]
        return min(found) if found else None

    def _delta(self) -> RowDelta | None:
        if self.finish is not None:
            end = len(self.text)
        else:
            end = len(self.text) - self.hold  # a stop string may still be forming
            while end > self.emitted and self.text[end - 1] == "\ufffd":  # an incomplete UTF-8 sequence
                end -= 1
        if end <= self.emitted and self.finish is None:
            return None
        delta = RowDelta(0, self.text[self.emitted : max(end, self.emitted)], self.finish)
        self.emitted = max(end, self.emitted)
        return delta


def _sample(logits: Tensor, row: _RowState) -> int:
    req = row.request
    probs = torch.softmax(logits.float().cpu() / req.temperature, dim=-1)
    if req.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs > req.top_p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs / probs.sum(), 1, generator=row.generator))


def _next_tokens(logits: Tensor, rows: Sequence[_RowState]) -> list[int | str]:
    """Each row's next token, or why that row cannot go on (its logits are not finite, its sampler failed).

    A failure is the row's own: the other rows of the batch get their tokens as if it were not there.
    """
    greedy = logits.argmax(dim=-1).tolist()
    finite = torch.isfinite(logits).all(dim=-1).tolist()
    chosen: list[int | str] = []
    for i, row in enumerate(rows):
        if not finite[i]:
            chosen.append("the model produced non-finite logits for this request (is the steering strength too high?)")
        elif row.request.temperature <= 0.0:
            chosen.append(int(greedy[i]))
        else:
            try:
                chosen.append(_sample(logits[i], row))
            except RuntimeError as exc:
                chosen.append(f"sampling failed: {exc}")
    return chosen


class Engine:
    """Generates for many requests at once on one loaded model.

    The model's `lock` is held for a whole batch: hooks are module-global, so nothing else may run a
    forward pass on the model while a steered batch is in flight.
    """

    def __init__(self, lm: LoadedModel) -> None:
        self.lm = lm
        tokenizer = lm.tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        eos = lm.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        self.eos_ids = eos_ids

    def encode(self, text: str) -> list[int]:
        return list(self.lm.tokenizer(text)["input_ids"])

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        use_cache: bool = True,
        on_step: Callable[[list[RowDelta]], None] | None = None,
    ) -> list[GenerationResult]:
        if not requests:
            return []
        if any(not r.prompt_ids for r in requests):
            raise ValueError("every request needs at least one prompt token")
        with self.lm.lock:
            return self._generate(requests, use_cache, on_step)

    def _generate(self, requests, use_cache, on_step) -> list[GenerationResult]:
        lm, device = self.lm, self.lm.device
        started = time.perf_counter()
        rows = [_RowState(r, lm.tokenizer, self.eos_ids) for r in requests]
        ids, mask = left_pad([r.prompt_ids for r in requests], self.pad_id, device)
        prompt_len = ids.shape[1]
        positions = positions_from_mask(mask)
        steering = BatchSteering.build([r.steering for r in requests], lm.arch, prompt_len, device, lm.dtype)
        cache = DynamicCache(config=lm.model.config) if use_cache else None
        max_steps = max(r.max_new_tokens for r in requests)
        with maybe_attached(steering, lm.arch), torch.inference_mode():
            for step in range(max_steps):
                incremental = use_cache and step > 0
                offset = ids.shape[1] - 1 if incremental else 0
                if steering is not None:
                    steering.offset = offset
                out = lm.model(
                    input_ids=ids[:, offset:],
                    attention_mask=mask,
                    position_ids=positions[:, offset:],
                    past_key_values=cache,
                    use_cache=use_cache,
                    logits_to_keep=1,
                )
                choices = _next_tokens(out.logits[:, -1], rows)
                tokens = [self.pad_id] * len(rows)
                deltas = []
                for i, (row, choice) in enumerate(zip(rows, choices, strict=True)):
                    if row.finish is not None:
                        continue
                    if isinstance(choice, str):
                        delta = row.fail(choice)
                    else:
                        tokens[i] = choice
                        delta = row.push(choice)
                    if delta is not None:
                        delta.row = i
                        deltas.append(delta)
                if on_step is not None and deltas:
                    on_step(deltas)
                if all(r.finish is not None for r in rows):
                    break
                ids = torch.cat([ids, torch.tensor(tokens, device=device)[:, None]], dim=1)
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                positions = torch.cat([positions, positions[:, -1:] + 1], dim=1)
        finished = time.perf_counter()
        return [
            GenerationResult(
                text=row.text,
                token_ids=row.ids,
                finish_reason=row.finish or "length",
                prompt_tokens=len(row.request.prompt_ids),
                error=row.error,
                timing={
                    "first_token_s": (row.first_token_at or finished) - started,
                    "total_s": finished - started,
                },
            )
            for row in rows
        ]

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        """Text deltas of one request as they are produced (generation runs in a worker thread).

        Leaving the loop early cancels the generation.
        """
        if request.cancel is None:
            request.cancel = threading.Event()
        pieces: queue.Queue[str | BaseException | None] = queue.Queue()

        def run() -> None:
            try:
                (result,) = self.generate([request], on_step=lambda deltas: [pieces.put(d.text) for d in deltas])
                pieces.put(GenerationFailed(result.error) if result.error else None)
            except BaseException as exc:  # handed to the consuming thread
                pieces.put(exc)

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        try:
            while (piece := pieces.get()) is not None:
                if isinstance(piece, BaseException):
                    raise piece
                if piece:
                    yield piece
        finally:
            request.cancel.set()
            worker.join()
