"""Vector computation off the request path, once per task across every replica sharing the store.

A task is computed by whichever process holds its lock in the store. The lock expires unless its
holder keeps refreshing it, so a replica that dies mid-computation leaves no task stuck: every
replica's reconciler looks for unfinished tasks every few seconds and adopts those whose lock is free.
No task is stranded: a computation is bounded in time, a task is tried at most `max_attempts` times,
the final write (vector and record together) is retried, and a replica that shuts down hands its
running computation back as pending for another replica.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from enum import Enum
from typing import Any

from app.metrics import Metrics
from app.settings import Settings
from app.store import StoreUnavailable, TaskRecord, TaskStore
from app.vector_cache import VectorCache
from steering.methods import Cancelled, compute_vector
from steering.model.loading import LoadedModel
from steering.vectors.task_vector import TaskVector
from steering.wire.protocol import Demonstration, Template

log = logging.getLogger(__name__)

FINAL_WRITE_RETRIES = 6  # with backoff 0.25 s doubling to 4 s: about 15 s of store outage survived


class StopReason(Enum):
    DELETED = "deleted"
    SHUTDOWN = "shutdown"
    TIMEOUT = "timeout"
    LOST_LOCK = "lost_lock"
    FINISHED_ELSEWHERE = "finished_elsewhere"


def vector_summary(vector: TaskVector) -> dict[str, Any]:
    return {
        "method": vector.method,
        "mode": vector.mode,
        "layers": vector.layers,
        "default_strength": vector.default_strength,
        "num_demonstrations": vector.num_demonstrations,
        "metrics": {**vector.metrics, "compute_seconds": round(vector.compute_seconds, 3)},
        "answer_end": vector.answer_end.model_dump() if vector.answer_end is not None else None,
    }


class _Run:
    """One computation in flight: how to stop it, and why it was stopped."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.reason: StopReason | None = None

    def halt(self, reason: StopReason) -> None:
        if self.reason is None:
            self.reason = reason
        self.stop.set()


class VectorWorker:
    def __init__(
        self, lm: LoadedModel, store: TaskStore, vectors: VectorCache, settings: Settings, metrics: Metrics
    ) -> None:
        self.lm, self.store, self.vectors, self.settings, self.metrics = lm, store, vectors, settings, metrics
        self.holder = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.computes = settings.role != "api"  # an `api` replica leaves every computation to the workers
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vector-worker")
        self._one_at_a_time = asyncio.Semaphore(1)
        self._tasks: dict[str, asyncio.Task] = {}
        self._runs: dict[str, _Run] = {}
        self._reconciler: asyncio.Task | None = None
        self._closing = False

    def submit(self, task_id: str) -> None:
        """Make sure this process either computes the task or watches whoever does."""
        if task_id in self._tasks or self._closing or not self.computes:
            return
        task = asyncio.get_running_loop().create_task(self._follow(task_id), name=f"vector:{task_id}")
        self._tasks[task_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(task_id, None))

    def cancel(self, task_id: str) -> None:
        run = self._runs.get(task_id)
        if run is not None:
            run.halt(StopReason.DELETED)

    @property
    def busy(self) -> int:
        return len(self._tasks)

    def start(self) -> None:
        if not self.computes:
            return
        self._reconciler = asyncio.get_running_loop().create_task(self._reconcile(), name="reconciler")

    async def reconcile_once(self) -> None:
        """Follow every unfinished task of this model: those whose lock is free get computed here."""
        for task_id in await self.store.unfinished():
            self.submit(task_id)

    async def _reconcile(self) -> None:
        while True:
            try:
                await self.reconcile_once()
            except StoreUnavailable:
                log.warning("store unavailable: reconciling again in %.0f s", self.settings.reconcile_interval_s)
            except Exception:
                log.exception("reconciling unfinished tasks failed")
            await asyncio.sleep(self.settings.reconcile_interval_s)

    async def close(self) -> None:
        """Stop computing: running computations go back to pending for another replica (or the next start)."""
        self._closing = True
        if self._reconciler is not None:
            self._reconciler.cancel()
        for run in self._runs.values():
            run.halt(StopReason.SHUTDOWN)
        for task_id, task in self._tasks.items():
            if task_id not in self._runs:  # only watching another replica, or waiting its turn: nothing to hand back
                task.cancel()
        tasks = list(self._tasks.values())
        if tasks:
            _, unfinished = await asyncio.wait(tasks, timeout=self.settings.drain_timeout_s)
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _follow(self, task_id: str) -> None:
        ttl = self.settings.lock_ttl_s
        try:
            while not self._closing:
                record = await self.store.get(task_id)
                if record is None or record.status in ("ready", "failed") or record.fingerprint != self.lm.fingerprint:
                    return
                async with self._one_at_a_time:
                    if not self._closing and await self.store.acquire_lock(task_id, self.holder, ttl):
                        try:
                            await self._attempt(task_id)
                        finally:
                            with contextlib.suppress(StoreUnavailable):
                                await self.store.release_lock(task_id, self.holder)
                        # Look again: a failed task posted anew while this follower was finishing is pending.
                        continue
                # Someone else holds the lock: check again later, take over if it expires.
                await asyncio.sleep(min(ttl / 4, 5.0))
        except StoreUnavailable:
            log.warning("store unavailable while following %s; the reconciler will adopt it again", task_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("following task %s failed", task_id)

    async def _attempt(self, task_id: str) -> None:
        record = await self.store.get(task_id)
        if record is None or record.status in ("ready", "failed"):
            return
        orphaned = record.orphaned + (record.status == "running")  # its last computer died without a word
        if orphaned >= self.settings.max_attempts:
            await self._fail(
                record,
                f"gave up after {orphaned} attempts that ended without a result "
                "(the computing replica stopped, or lost the store, each time)",
            )
            return
        record = await self.store.update(
            task_id, status="running", attempts=record.attempts + 1, orphaned=orphaned, error=None
        )
        if record is not None:
            await self._compute(record)

    async def _fail(self, record: TaskRecord, error: str) -> None:
        self.metrics.computations.labels(record.method, "failed").inc()
        await self.store.update(record.id, status="failed", error=error, progress=None)

    async def _compute(self, record: TaskRecord) -> None:
        task_id = record.id
        run = self._runs.setdefault(task_id, _Run())
        loop = asyncio.get_running_loop()
        reports: list[concurrent.futures.Future] = []
        last_report = [0.0]

        def progress(info: dict[str, Any]) -> None:  # called from the worker thread
            now = time.monotonic()
            if now - last_report[0] >= 0.5:
                last_report[0] = now
                reports.append(asyncio.run_coroutine_threadsafe(self._report(task_id, info), loop))

        heartbeat = loop.create_task(self._heartbeat(task_id, run))
        started = time.perf_counter()
        computing = loop.run_in_executor(self._executor, self._run_method, record, progress, run.stop)
        try:
            try:
                vector = await asyncio.wait_for(asyncio.shield(computing), self.settings.compute_timeout_s)
            except TimeoutError:
                run.halt(StopReason.TIMEOUT)
                vector = await computing  # methods check the stop flag between steps: Cancelled comes soon
            finally:  # a progress write landing after the outcome would leave a finished task with stale progress
                await asyncio.gather(*(asyncio.wrap_future(f) for f in reports), return_exceptions=True)
        except Cancelled:
            await self._stopped(record, run.reason)
            return
        except Exception as exc:
            log.exception("computing task %s failed", task_id)
            await self._fail(record, f"{type(exc).__name__}: {exc}")
            return
        finally:
            heartbeat.cancel()
            self._runs.pop(task_id, None)
        if run.reason is not None:  # stopped after the method's last check: the result is not wanted
            await self._stopped(record, run.reason)
            return
        self.metrics.computations.labels(record.method, "ready").inc()
        self.metrics.compute_seconds.labels(record.method).observe(time.perf_counter() - started)
        await self._finish(record, vector)

    async def _stopped(self, record: TaskRecord, reason: StopReason | None) -> None:
        log.info("computation of %s stopped (%s)", record.id, reason.value if reason else "cancelled")
        self.metrics.computations.labels(record.method, "cancelled").inc()
        if reason is StopReason.TIMEOUT:
            await self._fail(record, f"the computation took longer than {self.settings.compute_timeout_s:g} s")
        elif reason is StopReason.SHUTDOWN:  # hand it back, without counting this attempt against it
            await self.store.update(record.id, status="pending", progress=None, attempts=max(record.attempts - 1, 0))

    async def _finish(self, record: TaskRecord, vector: TaskVector) -> None:
        """Vector and ready record in one atomic write, retried through a short store outage."""
        data = vector.to_bytes()
        delay = 0.25
        for attempt in range(FINAL_WRITE_RETRIES):
            try:
                done = await self.store.finish(
                    record.id, data, status="ready", summary=vector_summary(vector), progress=None, error=None
                )
            except StoreUnavailable:
                if attempt == FINAL_WRITE_RETRIES - 1:
                    raise
                log.warning("final write of %s failed; retrying in %.2f s", record.id, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 4.0)
                continue
            if done is not None:  # None: deleted meanwhile, nothing was written
                self.vectors.put(done, vector)
            return

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
            time_limit_s=self.settings.compute_timeout_s,  # `auto` starts no candidate that would run past it
        )

    async def _report(self, task_id: str, info: dict[str, Any]) -> None:
        try:
            await self.store.update(task_id, progress=info)
        except Exception:  # progress is best effort
            log.debug("progress update for %s failed", task_id, exc_info=True)

    async def _heartbeat(self, task_id: str, run: _Run) -> None:
        """Keep the lock while computing; stop when the task is deleted (here or elsewhere), taken over, or
        finished by another replica (one that computed it while this one's lock lapsed in a store outage)."""
        ttl = self.settings.lock_ttl_s
        while not run.stop.is_set():
            await asyncio.sleep(min(ttl / 3, 2.0))
            try:
                record = await self.store.get(task_id)
                if record is None:
                    run.halt(StopReason.DELETED)
                    return
                if record.status == "ready":
                    log.info("another replica finished %s: stopping here", task_id)
                    run.halt(StopReason.FINISHED_ELSEWHERE)
                    return
                if not await self.store.refresh_lock(task_id, self.holder, ttl) and not await self.store.acquire_lock(
                    task_id, self.holder, ttl
                ):
                    log.warning("another replica took the lock of %s: stopping here", task_id)
                    run.halt(StopReason.LOST_LOCK)
                    return
            except StoreUnavailable:
                log.warning("store unavailable during heartbeat of %s", task_id)
