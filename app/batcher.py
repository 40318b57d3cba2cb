"""Gathers concurrent generation requests into batches; each row keeps its own steering plan.

Requests wait at most `window` for company, then run together on the generation thread. The queue
is bounded: a full queue answers 503 at once rather than letting work pile up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from app.errors import ApiError
from app.metrics import Metrics
from steering.engine import Engine, GenerationRequest, GenerationResult, RowDelta

log = logging.getLogger(__name__)


@dataclass
class Pending:
    request: GenerationRequest
    future: asyncio.Future
    deltas: asyncio.Queue | None = None  # text pieces while streaming; None marks the end
    enqueued_at: float = field(default_factory=time.perf_counter)


class Batcher:
    def __init__(self, engine: Engine, max_batch: int, window_s: float, max_queue: int, metrics: Metrics) -> None:
        self.engine, self.max_batch, self.window_s, self.metrics = engine, max_batch, window_s, metrics
        self._queue: asyncio.Queue[Pending] = asyncio.Queue(maxsize=max_queue)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generation")
        self._runner: asyncio.Task | None = None

    def start(self) -> None:
        self._runner = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    async def close(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(ApiError(503, "shutting_down", "the server is shutting down"))
        self._executor.shutdown(wait=True, cancel_futures=True)

    def submit(self, request: GenerationRequest, stream: bool = False) -> Pending:
        if request.cancel is None:
            request.cancel = threading.Event()
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

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if not batch:
                continue
            self.metrics.batch_size.observe(len(batch))

            def on_step(deltas: list[RowDelta], batch=batch) -> None:  # on the generation thread
                for delta in deltas:
                    queue = batch[delta.row].deltas
                    if queue is not None and delta.text:
                        loop.call_soon_threadsafe(queue.put_nowait, delta.text)

            try:
                results = await loop.run_in_executor(
                    self._executor, lambda b=batch: self.engine.generate([p.request for p in b], on_step=on_step)
                )
            except Exception as exc:
                log.exception("generation batch failed")
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                    if p.deltas is not None:
                        p.deltas.put_nowait(None)
                continue
            for p, result in zip(batch, results, strict=True):
                self.metrics.generated_tokens.inc(len(result.token_ids))
                result.timing["queue_s"] = time.perf_counter() - p.enqueued_at - result.timing.get("total_s", 0.0)
                if not p.future.done():
                    p.future.set_result(result)
                if p.deltas is not None:
                    p.deltas.put_nowait(None)
