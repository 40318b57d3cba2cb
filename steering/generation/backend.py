"""The generation backend interface: what the service needs from an engine, whichever engine it is.

A backend takes `GenerationRequest`s (prompt ids, per-row steering plan, sampling, stop rules), answers
each with a `Submission` that streams text pieces and settles with a `GenerationResult`, honours a row's
`cancel` event, and reports whether it is alive. The transformers engine (`steering.generation.transformers`)
and the vLLM engine (`steering.generation.vllm`) implement it; the service picks one at start-up.

Failures are `steering.generation.errors.GenerationError`s (or `SteeringError` for a plan the model cannot
take), set on the submission's future; the app maps them to HTTP in one place.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

from steering.generation.errors import RowFailed
from steering.generation.rows import GenerationRequest, GenerationResult


@dataclass
class Submission:
    """One request handed to a backend: its outcome, and its text pieces while streaming (None ends them)."""

    request: GenerationRequest
    future: asyncio.Future[GenerationResult]
    deltas: asyncio.Queue[str | None] | None = None
    enqueued_at: float = field(default_factory=time.perf_counter)
    sent: int = 0  # characters already streamed to the client
    produced: int = 0  # characters produced by the current run of this row (a retry starts again at 0)

    def stream(self, text: str) -> str:
        """The part of `text` the client has not seen yet (a retried row regenerates what it streamed)."""
        start = self.produced
        self.produced += len(text)
        fresh = text[max(self.sent - start, 0) :]
        self.sent = max(self.sent, self.produced)
        return fresh

    def put(self, text: str) -> None:
        """Stream the fresh part of `text` (on the event loop's thread)."""
        fresh = self.stream(text)
        if fresh and self.deltas is not None:
            self.deltas.put_nowait(fresh)


class Counter(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class Gauge(Protocol):
    def set(self, value: float) -> None: ...


class Histogram(Protocol):
    def observe(self, amount: float) -> None: ...


class GenerationMetrics(Protocol):
    """What a backend reports (the app's Prometheus metrics have these three)."""

    queue_depth: Gauge
    batch_size: Histogram
    generated_tokens: Counter


class GenerationBackend(Protocol):
    """An engine the service generates with (see the module docstring)."""

    name: str  # "transformers" or "vllm"
    serving: bool  # False in a replica that only computes vectors: `submit` raises NotServing
    restarts: int  # how often the backend's loop was restarted after a bug

    @property
    def alive(self) -> bool: ...

    def start(self) -> None:
        """Start serving (on the running event loop)."""

    def submit(self, request: GenerationRequest, stream: bool = False) -> Submission:
        """Queue a request; raises Overloaded, ShuttingDown or NotServing at once when it cannot be taken."""
        ...

    async def result(self, submission: Submission) -> GenerationResult:
        """Wait for a request's result; a cancelled wait (the client left) cancels the row."""
        ...

    def stop_accepting(self) -> None:
        """On SIGTERM: rows in flight finish, queued and new requests get ShuttingDown."""

    async def close(self) -> None:
        """Stop: rows still in flight fail with ShuttingDown."""


# What every backend does with a submission, written once.


def new_submission(request: GenerationRequest, stream: bool) -> Submission:
    """A request's submission (on the event loop), with its cancel event and its seed fixed now, so that a
    retry of the row samples the same tokens."""
    if request.cancel is None:
        request.cancel = threading.Event()
    if request.seed is None:
        request.seed = random.getrandbits(63)
    return Submission(request, asyncio.get_running_loop().create_future(), asyncio.Queue() if stream else None)


async def wait_for(submission: Submission) -> GenerationResult:
    """A submission's result; a cancelled wait (the client left) cancels its row."""
    try:
        return await asyncio.shield(submission.future)
    except asyncio.CancelledError:
        assert submission.request.cancel is not None
        submission.request.cancel.set()
        raise


def settle(submission: Submission, outcome: GenerationResult | BaseException) -> None:
    """Give a submission its outcome and end its stream (once: later outcomes are dropped)."""
    if not submission.future.done():
        if isinstance(outcome, BaseException):
            submission.future.set_exception(outcome)
        else:
            submission.future.set_result(outcome)
    if submission.deltas is not None:
        submission.deltas.put_nowait(None)


def finish(submission: Submission, outcome: GenerationResult | BaseException, metrics: GenerationMetrics) -> None:
    """Count, time and settle a row's outcome (a row that failed alone settles as `RowFailed`)."""
    if isinstance(outcome, GenerationResult):
        metrics.generated_tokens.inc(len(outcome.token_ids))
        outcome.timing["queue_s"] = time.perf_counter() - submission.enqueued_at - outcome.timing.get("total_s", 0.0)
        if outcome.error is not None:
            outcome = RowFailed(outcome.error)
    settle(submission, outcome)
