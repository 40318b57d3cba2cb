"""`STEER_ENGINE=vllm`: the generation backend over `VllmEngine` (see `steering.generation.backend`).

vLLM schedules rows itself (continuous batching, chunked prefill, prefix caching), so this is not a
scheduler: each submitted request runs as its own task over `VllmEngine.generate`, streaming its pieces
into its `Submission`. The backend's promises are kept: a bound on requests held (`Overloaded` beyond
`max_batch + max_queue`), `ShuttingDown` while draining and `NotServing` in a `worker` replica, a plan the
model cannot take fails alone, a client that leaves cancels its row.

vLLM starts in the background (tens of seconds); `alive` is False until it has, and requests that arrive
meanwhile wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from steering.generation.backend import GenerationMetrics, Submission, finish, new_submission, settle, wait_for
from steering.generation.errors import NotServing, Overloaded, ShuttingDown
from steering.generation.rows import GenerationRequest, GenerationResult
from steering.generation.vllm.engine import VllmEngine

log = logging.getLogger(__name__)


class VllmBackend:
    name = "vllm"

    def __init__(
        self,
        start_engine: Callable[[], Awaitable[VllmEngine]],
        max_batch: int,
        max_queue: int,
        metrics: GenerationMetrics,
        *,
        serving: bool = True,
    ) -> None:
        self._start_engine, self.metrics, self.serving = start_engine, metrics, serving
        self.max_batch, self.max_held = max_batch, max_batch + max_queue
        self.engine: VllmEngine | None = None
        self._starting: asyncio.Task[VllmEngine] | None = None
        self._rows: set[asyncio.Task[None]] = set()
        self.accepting = True
        self.restarts = 0

    def start(self) -> None:
        if self.serving:
            self._starting = asyncio.get_running_loop().create_task(self._start(), name="vllm-start")

    async def _start(self) -> VllmEngine:
        try:
            self.engine = await self._start_engine()
        except Exception:
            log.exception("vLLM did not start")
            raise
        return self.engine

    @property
    def alive(self) -> bool:
        if self._starting is None or not self._starting.done() or self._starting.exception() is not None:
            return False
        return not getattr(self._starting.result().llm, "errored", False)

    def stop_accepting(self) -> None:
        self.accepting = False

    def submit(self, request: GenerationRequest, stream: bool = False) -> Submission:
        if not self.serving:
            raise NotServing()
        if not self.accepting:
            raise ShuttingDown()
        if len(self._rows) >= self.max_held:
            raise Overloaded()
        submission = new_submission(request, stream)
        loop = asyncio.get_running_loop()
        row = loop.create_task(self._run(submission))
        self._rows.add(row)
        row.add_done_callback(self._rows.discard)
        self.metrics.batch_size.observe(min(len(self._rows), self.max_batch))
        self.metrics.queue_depth.set(max(0, len(self._rows) - self.max_batch))
        return submission

    async def result(self, submission: Submission) -> GenerationResult:
        return await wait_for(submission)

    async def _run(self, submission: Submission) -> None:
        try:
            if self._starting is None:
                raise ShuttingDown()
            engine = await asyncio.shield(self._starting)
            result = None
            async for item in engine.generate(submission.request):
                if isinstance(item, GenerationResult):
                    result = item
                else:
                    submission.put(item)
            assert result is not None
            finish(submission, result, self.metrics)
        except asyncio.CancelledError:
            settle(submission, ShuttingDown())
            raise
        except Exception as exc:
            settle(submission, exc)

    async def close(self) -> None:
        self.accepting = False
        for row in list(self._rows):
            row.cancel()
        for row in list(self._rows):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await row
        if self._starting is not None:
            self._starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._starting
        if self.engine is not None:
            self.engine.close()
