"""Vector computation off the request path, once per task across every replica sharing the store.

A task is computed by whichever process holds its lock in the store. The lock expires unless its
holder keeps refreshing it, so a replica that dies mid-computation leaves no task stuck: another
replica waiting on the task (or the same one after a restart) takes the lock and computes it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from app.metrics import Metrics
from app.settings import Settings
from app.store import StoreUnavailable, TaskRecord, TaskStore
from app.vector_cache import VectorCache
from steering.methods import Cancelled, compute_vector
from steering.model import LoadedModel
from steering.protocol import Demonstration, Template
from steering.vectors import TaskVector

log = logging.getLogger(__name__)


def vector_summary(vector: TaskVector) -> dict[str, Any]:
    return {
        "method": vector.method,
        "mode": vector.mode,
        "layers": vector.layers,
        "default_strength": vector.default_strength,
        "num_demonstrations": vector.num_demonstrations,
        "metrics": {**vector.metrics, "compute_seconds": round(vector.compute_seconds, 3)},
    }


class VectorWorker:
    def __init__(
        self, lm: LoadedModel, store: TaskStore, vectors: VectorCache, settings: Settings, metrics: Metrics
    ) -> None:
        self.lm, self.store, self.vectors, self.settings, self.metrics = lm, store, vectors, settings, metrics
        self.holder = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vector-worker")
        self._one_at_a_time = asyncio.Semaphore(1)
        self._tasks: dict[str, asyncio.Task] = {}
        self._stops: dict[str, threading.Event] = {}

    def submit(self, task_id: str) -> None:
        """Make sure this process either computes the task or watches whoever does."""
        if task_id in self._tasks:
            return
        task = asyncio.get_running_loop().create_task(self._follow(task_id), name=f"vector:{task_id}")
        self._tasks[task_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(task_id, None))

    def cancel(self, task_id: str) -> None:
        stop = self._stops.get(task_id)
        if stop is not None:
            stop.set()

    @property
    def busy(self) -> int:
        return len(self._tasks)

    async def resume_unfinished(self) -> None:
        """At start-up: pick up tasks left pending or running (by a crash, or on another replica)."""
        for record in await self.store.list(all_owners=True):
            if record.status in ("pending", "running") and record.fingerprint == self.lm.fingerprint:
                self.submit(record.id)

    async def close(self) -> None:
        for stop in self._stops.values():
            stop.set()
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def _follow(self, task_id: str) -> None:
        ttl = self.settings.lock_ttl_s
        try:
            while True:
                record = await self.store.get(task_id)
                if record is None or record.status in ("ready", "failed"):
                    return
                async with self._one_at_a_time:
                    if await self.store.acquire_lock(task_id, self.holder, ttl):
                        try:
                            await self._compute(task_id)
                        finally:
                            await self.store.release_lock(task_id, self.holder)
                        # Look again: a failed task posted anew while this follower was finishing is pending.
                        continue
                # Someone else holds the lock: check again later, take over if it expires.
                await asyncio.sleep(min(ttl / 4, 5.0))
        except StoreUnavailable:
            log.warning("store unavailable while following %s; will retry on the next request", task_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("following task %s failed", task_id)

    async def _compute(self, task_id: str) -> None:
        record = await self.store.get(task_id)
        if record is None or record.status in ("ready", "failed"):
            return
        record = await self.store.update(task_id, status="running", attempts=record.attempts + 1, error=None)
        if record is None:
            return
        stop = self._stops.setdefault(task_id, threading.Event())
        loop = asyncio.get_running_loop()
        last_report = [0.0]
        reports: list[concurrent.futures.Future] = []

        def progress(info: dict[str, Any]) -> None:  # called from the worker thread
            now = time.monotonic()
            if now - last_report[0] >= 0.5:
                last_report[0] = now
                reports.append(asyncio.run_coroutine_threadsafe(self._report(task_id, info), loop))

        heartbeat = loop.create_task(self._heartbeat(task_id, stop))
        started = time.perf_counter()
        try:
            try:
                vector = await loop.run_in_executor(self._executor, self._run_method, record, progress, stop)
            finally:  # a progress write landing after the outcome would leave a finished task with stale progress
                await asyncio.gather(*(asyncio.wrap_future(f) for f in reports), return_exceptions=True)
        except Cancelled:
            log.info("task %s cancelled", task_id)
            self.metrics.computations.labels(record.method, "cancelled").inc()
            return
        except Exception as exc:
            log.exception("computing task %s failed", task_id)
            self.metrics.computations.labels(record.method, "failed").inc()
            await self.store.update(task_id, status="failed", error=f"{type(exc).__name__}: {exc}", progress=None)
            return
        finally:
            heartbeat.cancel()
            self._stops.pop(task_id, None)
        self.metrics.computations.labels(record.method, "ready").inc()
        self.metrics.compute_seconds.labels(record.method).observe(time.perf_counter() - started)
        if stop.is_set():
            return
        await self.store.put_vector(task_id, vector.to_bytes())
        self.vectors.put(task_id, vector)
        await self.store.update(task_id, status="ready", summary=vector_summary(vector), progress=None)

    def _run_method(self, record: TaskRecord, progress, stop: threading.Event) -> TaskVector:
        spec = record.spec
        return compute_vector(
            self.lm,
            [Demonstration(**d) for d in spec["demonstrations"]],
            record.method,
            template=Template(**spec["template"]),
            options=spec.get("options", {}),
            progress=progress,
            should_stop=stop.is_set,
        )

    async def _report(self, task_id: str, info: dict[str, Any]) -> None:
        try:
            await self.store.update(task_id, progress=info)
        except Exception:  # progress is best effort
            log.debug("progress update for %s failed", task_id, exc_info=True)

    async def _heartbeat(self, task_id: str, stop: threading.Event) -> None:
        """Keep the lock while computing; stop when the task is deleted (here or on another replica)."""
        ttl = self.settings.lock_ttl_s
        while not stop.is_set():
            await asyncio.sleep(min(ttl / 3, 2.0))
            try:
                if await self.store.get(task_id) is None:
                    stop.set()
                    return
                await self.store.refresh_lock(task_id, self.holder, ttl)
            except StoreUnavailable:
                log.warning("store unavailable during heartbeat of %s", task_id)
