"""What both transformers schedulers share: the bounded queue, supervision, SIGTERM behaviour, retries alone.

How rows share the model is the subclass's business: `ContinuousBackend` (`continuous.py`, the default)
runs rows that join and leave a running batch step by step; `StaticBackend` (`static.py`,
`STEER_SCHEDULER=static`) gathers requests for a window and runs each batch until its longest row ends.
Both keep these promises:

The queue is bounded: a full queue raises `Overloaded` at once rather than letting work pile up.

Isolation: one row cannot fail another. A row whose logits go non-finite or whose sampler fails ends
alone (the engine reports it per row, `RowFailed`); if a step raises as a whole, its rows are run again one
by one on the same engine, so only the row that raises alone fails. Every request has a seed before it
runs, so a retried row reproduces what it had already streamed, and streamed text is never sent twice.

A bug while handling rows fails those rows' requests (the exception itself, a 500 with a request id in the
app), not the loop; the loop itself is supervised too: if it dies it is restarted, and `restarts` counts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor

from steering.generation.backend import GenerationMetrics, Submission, finish, new_submission, settle, wait_for
from steering.generation.errors import NotServing, Overloaded, ShuttingDown
from steering.generation.rows import GenerationRequest, GenerationResult, RowDelta
from steering.generation.transformers.engine import Engine
from steering.steer.inject import SteeringError

log = logging.getLogger(__name__)


class Batcher:
    """The queue and its guarantees; subclasses implement `_run`, the loop that takes rows off the queue."""

    name = "transformers"

    def __init__(
        self, engine: Engine, max_batch: int, max_queue: int, metrics: GenerationMetrics, *, serving: bool = True
    ) -> None:
        self.engine, self.max_batch, self.metrics, self.serving = engine, max_batch, metrics, serving
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

    async def _run(self) -> None:
        raise NotImplementedError

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

    async def _alone(self, submission: Submission) -> GenerationResult | BaseException:
        """One row run by itself from its start (a retry: what it streamed already is not sent again)."""
        try:
            (result,) = await self._run_rows([submission])
            return result
        except Exception as exc:
            return as_client_error(exc)

    async def _run_rows(self, batch: list[Submission]) -> list[GenerationResult]:
        """`Engine.generate` on these rows as one static batch, streaming their text."""
        loop = asyncio.get_running_loop()
        for submission in batch:
            submission.produced = 0

        def on_step(deltas: list[RowDelta]) -> None:  # on the generation thread
            for delta in deltas:
                if delta.text:
                    loop.call_soon_threadsafe(batch[delta.row].put, delta.text)

        return await loop.run_in_executor(
            self._executor, lambda: self.engine.generate([s.request for s in batch], on_step=on_step)
        )

    @staticmethod
    def _settle(submission: Submission, outcome: GenerationResult | BaseException) -> None:
        settle(submission, outcome)


def as_client_error(exc: BaseException) -> BaseException:
    """A steering plan the model cannot take is the request's fault; anything else stays a bug (logged)."""
    if not isinstance(exc, SteeringError):
        log.error("generation failed for one request", exc_info=exc)
    return exc
