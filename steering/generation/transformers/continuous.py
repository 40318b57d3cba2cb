"""Continuous batching (the default, `STEER_SCHEDULER=continuous`): requests join the running batch at the
next step and leave the moment they end (`steering.generation.transformers.scheduler`).

A request that finds the server idle starts at once; while rows run, the queue is drained before every
step, up to `max_batch` rows in flight. The loop, isolation and retries are `batcher.Batcher`'s.
"""

from __future__ import annotations

from steering.generation.backend import GenerationMetrics, Submission
from steering.generation.transformers.batcher import Batcher
from steering.generation.transformers.engine import Engine
from steering.generation.transformers.scheduler import (
    DEFAULT_PREFILL_CHUNK_TOKENS,
    DEFAULT_PRIORITY_NEW_TOKENS,
    Scheduler,
)


class ContinuousBackend(Batcher):
    def __init__(
        self,
        engine: Engine,
        max_batch: int,
        max_queue: int,
        metrics: GenerationMetrics,
        *,
        prefill_chunk_tokens: int = DEFAULT_PREFILL_CHUNK_TOKENS,
        priority_new_tokens: int = DEFAULT_PRIORITY_NEW_TOKENS,
        serving: bool = True,
    ) -> None:
        scheduler = Scheduler(
            engine, prefill_chunk_tokens=prefill_chunk_tokens, priority_new_tokens=priority_new_tokens
        )
        super().__init__(engine, scheduler, max_batch, max_queue, metrics, serving=serving)

    async def _gather(self, first: Submission) -> list[Submission]:
        return [first]

    def _joining(self) -> list[Submission]:
        room = min(self.max_batch - len(self.scheduler), self._queue.qsize())
        return [self._queue.get_nowait() for _ in range(room)]
