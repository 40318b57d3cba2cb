"""Static batches (`STEER_SCHEDULER=static`): requests wait up to a window for company, then run together
until the batch's longest row ends, nobody joining meanwhile. The same decode loop as continuous batching
(`Scheduler.static`), admitted differently; kept for comparison with it (`make bench-load`)."""

from __future__ import annotations

import asyncio
import time

from steering.generation.backend import GenerationMetrics, Submission
from steering.generation.errors import ShuttingDown
from steering.generation.transformers.batcher import Batcher
from steering.generation.transformers.engine import Engine
from steering.generation.transformers.scheduler import Scheduler


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
        super().__init__(engine, Scheduler.static(engine), max_batch, max_queue, metrics, serving=serving)
        self.window_s = window_s

    async def _gather(self, first: Submission) -> list[Submission]:
        batch = [first]
        deadline = time.perf_counter() + self.window_s
        while len(batch) < self.max_batch:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
            except asyncio.CancelledError:  # closed while the batch waited for company
                for submission in batch:
                    self._settle(submission, ShuttingDown())
                raise
        while len(batch) < self.max_batch and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        return batch

    def _joining(self) -> list[Submission]:
        return []
