"""Continuous batching (the default, `STEER_SCHEDULER=continuous`): requests join the running batch at the
next step and leave the moment they end (`steering.scheduler`).

A request that finds the server idle starts at once; while rows run, the queue is drained before every
step, up to `max_batch` rows in flight. Each step runs on the generation thread, the model's lock taken
ahead of vector computations; for the whole busy period the lock also knows that generation has work, so a
computation does not slip in between two steps unless it has waited past its patience.

If a step raises, every row in flight is taken out and run again alone from its start (`_alone`), so only
the row that raises alone fails; rows waiting in the queue are untouched.

Metrics: `steer_batch_size` observes the rows in flight each time newcomers join, `steer_queue_depth` the
requests not yet admitted, `steer_generated_tokens` each row's tokens when it ends.
"""

from __future__ import annotations

import asyncio
import itertools
import logging

from app.batcher import Batcher, Pending, as_client_error, put_fresh, shutting_down
from app.metrics import Metrics
from steering.engine import Engine
from steering.scheduler import DEFAULT_PREFILL_CHUNK_TOKENS, DEFAULT_PRIORITY_NEW_TOKENS, RowUpdate, Scheduler

log = logging.getLogger(__name__)


class ContinuousBatcher(Batcher):
    def __init__(
        self,
        engine: Engine,
        max_batch: int,
        max_queue: int,
        metrics: Metrics,
        *,
        prefill_chunk_tokens: int = DEFAULT_PREFILL_CHUNK_TOKENS,
        priority_new_tokens: int = DEFAULT_PRIORITY_NEW_TOKENS,
        serving: bool = True,
    ) -> None:
        super().__init__(engine, max_batch, max_queue, metrics, serving=serving)
        self.scheduler = Scheduler(
            engine, prefill_chunk_tokens=prefill_chunk_tokens, priority_new_tokens=priority_new_tokens
        )
        self._rows: dict[int, Pending] = {}  # rows in the scheduler, by key
        self._keys = itertools.count()

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            try:
                with self.scheduler.lm.lock.demand():
                    await self._busy(first)
            except Exception as exc:  # a bug here must fail the rows in flight, not leave them waiting
                log.exception("the batcher failed with %d rows in flight", len(self._rows))
                self.scheduler.evict()
                for pending in [first, *self._take_rows()]:
                    self._settle(pending, exc)

    async def _busy(self, first: Pending) -> None:
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
        with self.scheduler.lm.lock.first():
            return self.scheduler.step()

    def _admit(self, arrivals: list[Pending]) -> None:
        self.metrics.queue_depth.set(self._queue.qsize())
        admitted = 0
        for pending in arrivals:
            if not self._live(pending):
                continue
            key = next(self._keys)
            try:
                self.scheduler.add(key, pending.request)
            except Exception as exc:
                self._settle(pending, as_client_error(exc))
                continue
            pending.produced = 0
            self._rows[key] = pending
            admitted += 1
        if admitted:
            self.metrics.batch_size.observe(len(self.scheduler))

    def _dispatch(self, updates: list[RowUpdate]) -> None:
        for update in updates:
            pending = self._rows.get(update.key)
            if pending is None:
                continue
            if update.text:
                put_fresh(pending, update.text)
            if update.result is not None:
                del self._rows[update.key]
                self._finish(pending, update.result)

    async def _retry_alone(self, exc: Exception) -> None:
        rows = [self._rows[key] for key, _ in self.scheduler.evict() if key in self._rows]
        self._rows.clear()
        log.warning("a step of %d rows failed (%s: %s): running them one by one", len(rows), type(exc).__name__, exc)
        for pending in rows:
            if len(rows) == 1:
                self._settle(pending, as_client_error(exc))
            else:
                self._finish(pending, await self._alone(pending))

    def _take_rows(self) -> list[Pending]:
        rows = list(self._rows.values())
        self._rows.clear()
        return rows

    async def close(self) -> None:
        await super().close()
        for pending in self._take_rows():  # rows still in flight when the drain time ran out
            self._settle(pending, shutting_down())
