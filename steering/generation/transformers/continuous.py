"""Continuous batching (the default, `STEER_SCHEDULER=continuous`): requests join the running batch at the
next step and leave the moment they end (`steering.generation.transformers.scheduler`).

A request that finds the server idle starts at once; while rows run, the queue is drained before every
step, up to `max_batch` rows in flight. Each step runs on the generation thread, the model's lock taken
ahead of vector computations; for the whole busy period the lock also knows that generation has work, so a
computation does not slip in between two steps unless it has waited past its patience.

If a step raises, every row in flight is taken out and run again alone from its start (`_alone`), so only
the row that raises alone fails; rows waiting in the queue are untouched.

Metrics: `batch_size` observes the rows in flight each time newcomers join, `queue_depth` the requests not
yet admitted, `generated_tokens` each row's tokens when it ends.
"""

from __future__ import annotations

import asyncio
import itertools
import logging

from steering.generation.backend import GenerationMetrics, Submission
from steering.generation.errors import ShuttingDown
from steering.generation.transformers.batcher import Batcher, as_client_error
from steering.generation.transformers.engine import Engine
from steering.generation.transformers.scheduler import (
    DEFAULT_PREFILL_CHUNK_TOKENS,
    DEFAULT_PRIORITY_NEW_TOKENS,
    RowUpdate,
    Scheduler,
)

log = logging.getLogger(__name__)


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
        super().__init__(engine, max_batch, max_queue, metrics, serving=serving)
        self.scheduler = Scheduler(
            engine, prefill_chunk_tokens=prefill_chunk_tokens, priority_new_tokens=priority_new_tokens
        )
        self._rows: dict[int, Submission] = {}  # rows in the scheduler, by key
        self._keys = itertools.count()

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            try:
                with self.engine.lm.lock.demand():
                    await self._busy(first)
            except Exception as exc:  # a bug here must fail the rows in flight, not leave them waiting
                log.exception("the batcher failed with %d rows in flight", len(self._rows))
                self.scheduler.evict()
                for submission in [first, *self._take_rows()]:
                    self._settle(submission, exc)

    async def _busy(self, first: Submission) -> None:
        """Steps until no row is in flight and nobody waits."""
        self._admit([first])
        loop = asyncio.get_running_loop()
        while self._rows or not self._queue.empty():
            room = self.max_batch - len(self.scheduler)
            self._admit([self._queue.get_nowait() for _ in range(min(room, self._queue.qsize()))])
            if not self._rows:
                continue
            try:
                updates = await loop.run_in_executor(self._executor, self._step)
            except Exception as exc:
                await self._retry_alone(exc)
                continue
            self._dispatch(updates)

    def _step(self) -> list[RowUpdate]:  # on the generation thread
        with self.engine.lm.lock.first():
            return self.scheduler.step()

    def _admit(self, arrivals: list[Submission]) -> None:
        self.metrics.queue_depth.set(self._queue.qsize())
        admitted = 0
        for submission in arrivals:
            if not self._live(submission):
                continue
            key = next(self._keys)
            try:
                self.scheduler.add(key, submission.request)
            except Exception as exc:
                self._settle(submission, as_client_error(exc))
                continue
            submission.produced = 0
            self._rows[key] = submission
            admitted += 1
        if admitted:
            self.metrics.batch_size.observe(len(self.scheduler))

    def _dispatch(self, updates: list[RowUpdate]) -> None:
        for update in updates:
            submission = self._rows.get(update.key)
            if submission is None:
                continue
            if update.text:
                submission.put(update.text)
            if update.result is not None:
                del self._rows[update.key]
                self._finish(submission, update.result)

    async def _retry_alone(self, exc: Exception) -> None:
        rows = [self._rows[key] for key, _ in self.scheduler.evict() if key in self._rows]
        self._rows.clear()
        log.warning("a step of %d rows failed (%s: %s): running them one by one", len(rows), type(exc).__name__, exc)
        for submission in rows:
            if len(rows) == 1:
                self._settle(submission, as_client_error(exc))
            else:
                self._finish(submission, await self._alone(submission))

    def _take_rows(self) -> list[Submission]:
        rows = list(self._rows.values())
        self._rows.clear()
        return rows

    async def close(self) -> None:
        await super().close()
        for submission in self._take_rows():  # rows still in flight when the drain time ran out
            self._settle(submission, ShuttingDown())
