"""Static batches (`STEER_SCHEDULER=static`): requests wait up to a window for company, then run together
until the batch's longest row ends. Kept for comparison with the continuous scheduler (`make bench-load`)."""

from __future__ import annotations

import asyncio
import logging
import time

from app.batcher import Batcher, Pending, as_client_error
from app.metrics import Metrics
from steering.engine import Engine, GenerationResult

log = logging.getLogger(__name__)


class StaticBatcher(Batcher):
    def __init__(
        self, engine: Engine, max_batch: int, window_s: float, max_queue: int, metrics: Metrics, *, serving: bool = True
    ) -> None:
        super().__init__(engine, max_batch, max_queue, metrics, serving=serving)
        self.window_s = window_s

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
        return [pending for pending in batch if self._live(pending)]

    async def _run(self) -> None:
        while True:
            batch = await self._collect()
            if not batch:
                continue
            try:
                self.metrics.batch_size.observe(len(batch))
                for pending, outcome in zip(batch, await self._generate(batch), strict=True):
                    self._finish(pending, outcome)
            except Exception as exc:  # a bug here must not leave the batch's clients waiting forever
                log.exception("the batcher failed on a batch of %d", len(batch))
                for pending in batch:
                    self._settle(pending, exc)

    async def _generate(self, batch: list[Pending]) -> list[GenerationResult | BaseException]:
        """The batch's results; if the batch raises, each row again alone, so only a failing row fails."""
        try:
            return list(await self._run_rows(batch))
        except Exception as exc:
            if len(batch) == 1:
                return [as_client_error(exc)]
            log.warning(
                "a batch of %d failed (%s: %s): running its rows one by one", len(batch), type(exc).__name__, exc
            )
        return [await self._alone(pending) for pending in batch]
