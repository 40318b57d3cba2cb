"""Static batches (`STEER_SCHEDULER=static`): requests wait up to a window for company, then run together
until the batch's longest row ends. Kept for comparison with the continuous scheduler (`make bench-load`)."""

from __future__ import annotations

import asyncio
import logging
import time

from steering.generation.backend import GenerationMetrics, Submission
from steering.generation.rows import GenerationResult
from steering.generation.transformers.batcher import Batcher, as_client_error
from steering.generation.transformers.engine import Engine

log = logging.getLogger(__name__)


class StaticBackend(Batcher):
    def __init__(
        self,
        engine: Engine,
        max_batch: int,
        window_s: float,
        max_queue: int,
        metrics: GenerationMetrics,
        *,
        serving: bool = True,
    ) -> None:
        super().__init__(engine, max_batch, max_queue, metrics, serving=serving)
        self.window_s = window_s

    async def _collect(self) -> list[Submission]:
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
        return [submission for submission in batch if self._live(submission)]

    async def _run(self) -> None:
        while True:
            batch = await self._collect()
            if not batch:
                continue
            try:
                self.metrics.batch_size.observe(len(batch))
                for submission, outcome in zip(batch, await self._generate(batch), strict=True):
                    self._finish(submission, outcome)
            except Exception as exc:  # a bug here must not leave the batch's clients waiting forever
                log.exception("the batcher failed on a batch of %d", len(batch))
                for submission in batch:
                    self._settle(submission, exc)

    async def _generate(self, batch: list[Submission]) -> list[GenerationResult | BaseException]:
        """The batch's results; if the batch raises, each row again alone, so only a failing row fails."""
        try:
            return list(await self._run_rows(batch))
        except Exception as exc:
            if len(batch) == 1:
                return [as_client_error(exc)]
            log.warning(
                "a batch of %d failed (%s: %s): running its rows one by one", len(batch), type(exc).__name__, exc
            )
        return [await self._alone(submission) for submission in batch]
