"""The generation queue shared by both schedulers: bounds, supervision, SIGTERM behaviour, retries alone.

How rows share the model is the subclass's business: `ContinuousBatcher` (app/continuous_batcher.py, the
default) runs rows that join and leave a running batch step by step; `StaticBatcher`
(app/static_batcher.py, `STEER_SCHEDULER=static`) gathers requests for a window and runs each batch
until its longest row ends. Both keep these promises:

The queue is bounded: a full queue answers 503 at once rather than letting work pile up.

Isolation: one row cannot fail another. A row whose logits go non-finite or whose sampler fails ends
alone (the engine reports it per row); if a step raises as a whole, its rows are run again one by one,
so only the row that raises alone fails. Every request has a seed before it runs, so a retried row
reproduces what it had already streamed, and streamed text is never sent twice.

A bug while handling rows fails those rows' requests (500 with a request id), not the loop; the loop
itself is supervised too: if it dies it is restarted, and `/readyz` reports the restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from app.errors import ApiError
from app.metrics import Metrics
from steering.engine import Engine, GenerationRequest, GenerationResult, RowDelta
from steering.inject import SteeringError

log = logging.getLogger(__name__)


def shutting_down() -> ApiError:
    return ApiError(503, "shutting_down", "this replica is shutting down; retry", headers={"Retry-After": "1"})


def not_serving() -> ApiError:
    return ApiError(
        503, "not_serving", "this replica computes vectors only (STEER_ROLE=worker)", headers={"Retry-After": "1"}
    )


@dataclass
class Pending:
    request: GenerationRequest
    future: asyncio.Future
    deltas: asyncio.Queue | None = None  # text pieces while streaming; None marks the end
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


class Batcher:
    def __init__(
        self, engine: Engine, max_batch: int, max_queue: int, metrics: Metrics, *, serving: bool = True
    ) -> None:
        self.engine, self.max_batch, self.metrics, self.serving = engine, max_batch, metrics, serving
        self._queue: asyncio.Queue[Pending] = asyncio.Queue(maxsize=max_queue)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generation")
        self._runner: asyncio.Task | None = None
        self.accepting = True
        self.restarts = 0

    def start(self) -> None:
        if self.serving:
            self._runner = asyncio.get_running_loop().create_task(self._supervise(), name="batcher")

    @property
    def alive(self) -> bool:
        return self._runner is not None and not self._runner.done()

    def stop_accepting(self) -> None:
        """On SIGTERM: running rows finish; queued ones and newcomers get 503 so clients go elsewhere."""
        self.accepting = False
        self._fail_queued()

    def _fail_queued(self) -> None:
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            self._settle(pending, shutting_down())

    async def close(self) -> None:
        self.accepting = False
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        self._fail_queued()
        self._executor.shutdown(wait=True, cancel_futures=True)

    def submit(self, request: GenerationRequest, stream: bool = False) -> Pending:
        if not self.serving:
            raise not_serving()
        if not self.accepting:
            raise shutting_down()
        if request.cancel is None:
            request.cancel = threading.Event()
        if request.seed is None:  # fixed now, so that a retry of this row samples the same tokens
            request.seed = random.getrandbits(63)
        pending = Pending(request, asyncio.get_running_loop().create_future(), asyncio.Queue() if stream else None)
        try:
            self._queue.put_nowait(pending)
        except asyncio.QueueFull:
            raise ApiError(
                503, "overloaded", "too many requests are waiting; retry shortly", headers={"Retry-After": "1"}
            ) from None
        self.metrics.queue_depth.set(self._queue.qsize())
        return pending

    async def result(self, pending: Pending) -> GenerationResult:
        """Wait for a non-streaming request; a cancelled wait (client gone) cancels the row."""
        try:
            return await asyncio.shield(pending.future)
        except asyncio.CancelledError:
            pending.request.cancel.set()
            raise

    async def _supervise(self) -> None:
        while True:
            try:
                await self._run()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.restarts += 1
                log.exception("the batcher loop failed; restarting it (restart %d)", self.restarts)
                await asyncio.sleep(0.05)

    async def _run(self) -> None:
        raise NotImplementedError

    @staticmethod
    def _live(pending: Pending) -> bool:
        """False (and the waiter released) for a request whose client left while it waited."""
        if not pending.request.cancel.is_set():
            return True
        if not pending.future.done():
            pending.future.cancel()
        return False

    def _finish(self, pending: Pending, outcome: GenerationResult | BaseException) -> None:
        """Count, time and settle one row's outcome (a row that failed alone answers 422)."""
        if isinstance(outcome, GenerationResult):
            self.metrics.generated_tokens.inc(len(outcome.token_ids))
            outcome.timing["queue_s"] = time.perf_counter() - pending.enqueued_at - outcome.timing.get("total_s", 0.0)
            if outcome.error is not None:
                outcome = ApiError(422, "generation_failed", outcome.error)
        self._settle(pending, outcome)

    async def _alone(self, pending: Pending) -> GenerationResult | BaseException:
        """One row run by itself from its start (a retry: what it streamed already is not sent again)."""
        try:
            (result,) = await self._run_rows([pending])
            return result
        except Exception as exc:
            return as_client_error(exc)

    async def _run_rows(self, batch: list[Pending]) -> list[GenerationResult]:
        """`Engine.generate` on these rows as one static batch, streaming their text."""
        loop = asyncio.get_running_loop()
        for pending in batch:
            pending.produced = 0

        def on_step(deltas: list[RowDelta]) -> None:  # on the generation thread
            for delta in deltas:
                pending = batch[delta.row]
                if pending.deltas is not None and delta.text:
                    loop.call_soon_threadsafe(put_fresh, pending, delta.text)

        return await loop.run_in_executor(
            self._executor, lambda: self.engine.generate([p.request for p in batch], on_step=on_step)
        )

    @staticmethod
    def _settle(pending: Pending, outcome: GenerationResult | BaseException) -> None:
        if not pending.future.done():
            if isinstance(outcome, BaseException):
                pending.future.set_exception(outcome)
            else:
                pending.future.set_result(outcome)
        if pending.deltas is not None:
            pending.deltas.put_nowait(None)


def put_fresh(pending: Pending, text: str) -> None:
    fresh = pending.stream(text)
    if fresh and pending.deltas is not None:
        pending.deltas.put_nowait(fresh)


def as_client_error(exc: BaseException) -> BaseException:
    """A steering plan the model cannot take is the request's fault (422); anything else stays a bug (500)."""
    if isinstance(exc, SteeringError):
        return ApiError(422, "invalid_steering", str(exc))
    log.error("generation failed for one request", exc_info=exc)
    return exc
