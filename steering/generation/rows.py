"""Generation requests, their results, and the state of one row while it generates.

Each row has its own sampling settings and random generator, so a row's tokens do not depend on which
other rows share its batch.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from steering.steer.inject import SteeringTerm
from steering.tasks.answer_end import AnswerEnd

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
    answer_end: AnswerEnd | None = None  # a task's learned end of an answer, on top of `stop`
    cancel: threading.Event | None = None

    def token_limit(self) -> int:
        """The most tokens this request generates: `max_new_tokens`, or fewer where its answer rule says so."""
        if self.answer_end is not None and self.answer_end.max_tokens is not None:
            return min(self.answer_end.max_tokens, self.max_new_tokens)
        return self.max_new_tokens


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    prompt_tokens: int
    timing: dict[str, float] = field(default_factory=dict)
    error: str | None = None  # why the row failed (finish_reason "error"); the other rows are unaffected


@dataclass
class RowDelta:
    """New text of one row after a step; `finish_reason` is set on the row's last delta."""

    text: str
    finish_reason: FinishReason | None = None


class RowState:
    """One request while it generates: its tokens, text, stop rules, random generator and outcome."""

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
        if request.answer_end is not None:
            self.hold = max(self.hold, request.answer_end.hold())

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
            elif len(self.ids) >= self.request.token_limit():
                self.finish = "length"
        return self._delta()

    def result(self, started: float, finished: float) -> GenerationResult:
        return GenerationResult(
            text=self.text,
            token_ids=self.ids,
            finish_reason=self.finish or "length",
            prompt_tokens=len(self.request.prompt_ids),
            error=self.error,
            timing={"first_token_s": (self.first_token_at or finished) - started, "total_s": finished - started},
        )

    def end(self, reason: FinishReason) -> RowDelta | None:
        """End the row without a new token (cancelled between steps); text held back for stop strings goes out."""
        if self.finish is None:
            self.finish = reason
        return self._delta()

    def fail(self, error: str) -> RowDelta:
        self.error, self.finish = error, "error"
        return RowDelta("", "error")

    def _stop_index(self) -> int | None:
        found = [i for i in (self.text.find(s, max(self.emitted - len(s), 0)) for s in self.request.stop) if i >= 0]
        if self.request.answer_end is not None and (end := self.request.answer_end.cut(self.text)) is not None:
            found.append(end)
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
        delta = RowDelta(self.text[self.emitted : max(end, self.emitted)], self.finish)
        self.emitted = max(end, self.emitted)
        return delta


def _sample(logits: Tensor, row: RowState) -> int:
    req = row.request
    probs = torch.softmax(logits.float().cpu() / req.temperature, dim=-1)
    if req.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs > req.top_p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs / probs.sum(), 1, generator=row.generator))


def next_tokens(logits: Tensor, rows: Sequence[RowState]) -> list[int | str]:
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


def sample_step(logits: Tensor, rows: Sequence[RowState], pad_id: int) -> tuple[list[int], list[RowDelta | None]]:
    """One decode step's sampling: each row's next token fed back to the model (the pad
    token for a row that failed) and what the step changed in the row (`None` when nothing reached the client)."""
    tokens: list[int] = []
    deltas: list[RowDelta | None] = []
    for row, choice in zip(rows, next_tokens(logits, rows), strict=True):
        if isinstance(choice, str):
            deltas.append(row.fail(choice))
            tokens.append(pad_id)
        else:
            deltas.append(row.push(choice))
            tokens.append(choice)
    return tokens, deltas
