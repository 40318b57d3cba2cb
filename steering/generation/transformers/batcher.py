"""The transformers backend: the bounded queue, the loop that runs rows on the scheduler, supervision,
SIGTERM behaviour, retries alone.

Every row runs on the engine's one decode loop (`steering.generation.transformers.scheduler.Scheduler`); the
subclasses are admission policies. `ContinuousBackend` (`continuous.py`, the default) lets waiting requests
join the running batch before every step; `StaticBackend` (`static.py`, `STEER_SCHEDULER=static`) gathers
requests for a window and admits nobody until the whole batch has ended. Both keep these promises:

The queue is bounded: a full queue raises `Overloaded` at once rather than letting work pile up.

Isolation: one row cannot fail another. A row whose logits go non-finite or whose sampler fails ends
alone (the engine reports it per row, `RowFailed`); if a step raises as a whole, every row in flight is
taken out and run again alone from its start on the same scheduler, so only the row that raises alone
fails; rows waiting in the queue are untouched. Every request has a seed before it runs, so a retried row
reproduces what it had already streamed, and streamed text is never sent twice.

Each step runs on the generation thread, the model's lock taken ahead of vector computations; for the whole
busy period the lock also knows that generation has work, so a computation does not slip in between two
steps unless it has waited past its patience.

A bug while handling rows fails those rows' requests (the exception itself, a 500 with a request id in the
app), not the loop; the loop itself is supervised too: if it dies it is restarted, and `restarts` counts it.

Metrics: `batch_size` observes the rows in flight each time newcomers are admitted, `queue_depth` the
requests not yet admitted, `generated_tokens` each row's tokens when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from concurrent.futures import ThreadPoolExecutor

from steering.generation.backend import GenerationMetrics, Submission, finish, new_submission, settle, wait_for
from steering.generation.errors import NotServing, Overloaded, ShuttingDown
from steering.generation.rows import GenerationRequest, GenerationResult
from steering.generation.transformers.engine import Engine
from steering.generation.transformers.scheduler import RowUpdate, Scheduler
from steering.steer.inject import SteeringError

log = logging.getLogger(__name__)


class Batcher:
    """The queue, the loop and their guarantees; subclasses choose which requests are admitted when
    (`_gather`, `_joining`)."""

    name = "transformers"

    def __init__(
        self,
        engine: Engine,
        scheduler: Scheduler,
        max_batch: int,
        max_queue: int,
        metrics: GenerationMetrics,
        *,
        serving: bool = True,
    ) -> None:
        self.engine, self.scheduler = engine, scheduler
        self.max_batch, self.metrics, self.serving = max_batch, metrics, serving
        self._rows: dict[int, Submission] = {}  # rows in the scheduler, by key
        self._keys = itertools.count()
        self._queue: asyncio.Queue[Submission] = asyncio.Queue(maxsize=max_queue)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generation")
        self._runner: asyncio.Task | None = None
        self.accepting = True
        self.restarts = 0

    def start(self) -> None:
        if self.serving:
            self._runner = asyncio.get_running_loop().create_task(self._supervise(), name="batcher")

    @property
    def alive(self) -> bool:
        return self._runner is not None and not self._runner.done()

    def stop_accepting(self) -> None:
        self.accepting = False
        self._fail_queued()

    def _fail_queued(self) -> None:
        while not self._queue.empty():
            self._settle(self._queue.get_nowait(), ShuttingDown())

    async def close(self) -> None:
        self.accepting = False
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        self._fail_queued()
        self._executor.shutdown(wait=True, cancel_futures=True)
        for submission in self._take_rows():  # rows still in flight when the drain time ran out
            self._settle(submission, ShuttingDown())

    def submit(self, request: GenerationRequest, stream: bool = False) -> Submission:
        if not self.serving:
            raise NotServing()
        if not self.accepting:
            raise ShuttingDown()
        submission = new_submission(request, stream)
        try:
            self._queue.put_nowait(submission)
        except asyncio.QueueFull:
            raise Overloaded() from None
        self.metrics.queue_depth.set(self._queue.qsize())
        return submission

    async def result(self, submission: Submission) -> GenerationResult:
        return await wait_for(submission)

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

    # -- admission policy -------------------------------------------------------------------------

    async def _gather(self, first: Submission) -> list[Submission]:
        """The requests that start a busy period, `first` (just taken off the queue) among them."""
        raise NotImplementedError

    def _joining(self) -> list[Submission]:
        """Requests taken off the queue to join the rows in flight before the next step."""
        raise NotImplementedError

    # -- the loop ---------------------------------------------------------------------------------

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
        """Steps until no row is in flight."""
        self._admit(await self._gather(first))
        while True:
            self._admit(self._joining())
            if not self._rows:
                return
            try:
                updates = await self._step()
            except Exception as exc:
                await self._retry_alone(exc)
                continue
            self._dispatch(updates)

    async def _step(self) -> list[RowUpdate]:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._step_locked)

    def _step_locked(self) -> list[RowUpdate]:  # on the generation thread
        with self.engine.lm.lock.first():
            return self.scheduler.step()

    def _admit(self, arrivals: list[Submission]) -> None:
        self.metrics.queue_depth.set(self._queue.qsize())
        if sum(self._add(submission) for submission in arrivals):
            self.metrics.batch_size.observe(len(self.scheduler))

    def _add(self, submission: Submission) -> bool:
        """Hand a row to the scheduler (to run from its start); False if it left or its plan was refused."""
        if not self._live(submission):
            return False
        key = next(self._keys)
        try:
            self.scheduler.add(key, submission.request)
        except Exception as exc:
            self._settle(submission, as_client_error(exc))
            return False
        submission.produced = 0
        self._rows[key] = submission
        return True

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
        """After a step raised: every row in flight again, one at a time, each alone on the scheduler."""
        self.scheduler.evict()
        rows = self._take_rows()
        log.warning("a step of %d rows failed (%s: %s): running them one by one", len(rows), type(exc).__name__, exc)
        if len(rows) == 1:
            self._settle(rows[0], as_client_error(exc))
            return
        for submission in rows:
            self._add(submission)
            while self._rows:
                try:
                    self._dispatch(await self._step())
                except Exception as again:
                    self.scheduler.evict()
                    self._rows.clear()
                    self._finish(submission, as_client_error(again))

    def _take_rows(self) -> list[Submission]:
        rows = list(self._rows.values())
        self._rows.clear()
        return rows

    @staticmethod
    def _live(submission: Submission) -> bool:
        """False (and the waiter released) for a request whose client left while it waited."""
        assert submission.request.cancel is not None
        if not submission.request.cancel.is_set():
            return True
        if not submission.future.done():
            submission.future.cancel()
        return False

    def _finish(self, submission: Submission, outcome: GenerationResult | BaseException) -> None:
        finish(submission, outcome, self.metrics)

    @staticmethod
    def _settle(submission: Submission, outcome: GenerationResult | BaseException) -> None:
        settle(submission, outcome)


def as_client_error(exc: BaseException) -> BaseException:
    """A steering plan the model cannot take is the request's fault; anything else stays a bug (logged)."""
    if not isinstance(exc, SteeringError):
        log.error("generation failed for one request", exc_info=exc)
    return exc
