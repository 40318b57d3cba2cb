"""Gathers concurrent generation requests into batches; each row keeps its own steering plan.

Requests wait at most `window` for company, then run together on the generation thread. The queue
is bounded: a full queue answers 503 at once rather than letting work pile up.

Isolation: one row cannot fail another. A row whose logits go non-finite or whose sampler fails ends
alone (the engine reports it per row); if a whole batch raises, its rows are run again one by one, so
only the row that raises alone fails. Every request has a seed before it runs, so a retried row
reproduces what it had already streamed, and streamed text is never sent twice.

A bug while handling a batch fails that batch's requests (500 with a request id), not the loop; the
loop itself is supervised too: if it dies it is restarted, and `/readyz` reports the restarts.
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
    def __init__(self, engine: Engine, max_batch: int, window_s: float, max_queue: int, metrics: Metrics) -> None:
        self.engine, self.max_batch, self.window_s, self.metrics = engine, max_batch, window_s, metrics
        self._queue: asyncio.Queue[Pending] = asyncio.Queue(maxsize=max_queue)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generation")
        self._runner: asyncio.Task | None = None
        self.accepting = True
        self.restarts = 0

    def start(self) -> None:
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

    async def _collect(self) -> list[Pending]:
        batch = [await self._queue.get()]
        deadline = time.perf_counter() + self.window_s
        while len(batch) < self.max_batch:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        while len(batch) < self.max_batch and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        self.metrics.queue_depth.set(self._queue.qsize())
        live = []
        for pending in batch:
            if not pending.request.cancel.is_set():
                live.append(pending)
            elif not pending.future.done():  # its client left while it waited
                pending.future.cancel()
        return live

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
        while True:
            batch = await self._collect()
            if not batch:
                continue
            try:
                await self._process(batch)
            except Exception as exc:  # a bug here must not leave the batch's clients waiting forever
                log.exception("the batcher failed on a batch of %d", len(batch))
                for pending in batch:
                    self._settle(pending, exc)

    async def _process(self, batch: list[Pending]) -> None:
        self.metrics.batch_size.observe(len(batch))
        outcomes = await self._generate(batch)
        for pending, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, GenerationResult):
                self.metrics.generated_tokens.inc(len(outcome.token_ids))
                outcome.timing["queue_s"] = (
                    time.perf_counter() - pending.enqueued_at - outcome.timing.get("total_s", 0.0)
                )
                if outcome.error is not None:
                    outcome = ApiError(422, "generation_failed", outcome.error)
            self._settle(pending, outcome)

    async def _generate(self, batch: list[Pending]) -> list[GenerationResult | BaseException]:
        """The batch's results; if the batch raises, each row again alone, so only a failing row fails."""
        try:
            return list(await self._run_rows(batch))
        except Exception as exc:
            if len(batch) == 1:
                return [_as_client_error(exc)]
            log.warning(
                "a batch of %d failed (%s: %s): running its rows one by one", len(batch), type(exc).__name__, exc
            )
        outcomes: list[GenerationResult | BaseException] = []
        for pending in batch:
            try:
                (result,) = await self._run_rows([pending])
                outcomes.append(result)
            except Exception as exc:
                outcomes.append(_as_client_error(exc))
        return outcomes

    async def _run_rows(self, batch: list[Pending]) -> list[GenerationResult]:
        loop = asyncio.get_running_loop()
        for pending in batch:
            pending.produced = 0

        def on_step(deltas: list[RowDelta]) -> None:  # on the generation thread
            for delta in deltas:
                pending = batch[delta.row]
                if pending.deltas is not None and delta.text:
                    loop.call_soon_threadsafe(_put_fresh, pending, delta.text)

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


def _put_fresh(pending: Pending, text: str) -> None:
    fresh = pending.stream(text)
    if fresh and pending.deltas is not None:
        pending.deltas.put_nowait(fresh)


def _as_client_error(exc: BaseException) -> BaseException:
    """A steering plan the model cannot take is the request's fault (422); anything else stays a bug (500)."""
    if isinstance(exc, SteeringError):
        return ApiError(422, "invalid_steering", str(exc))
    log.error("generation failed for one request", exc_info=exc)
    return exc
