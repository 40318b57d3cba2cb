"""`STEER_ENGINE=vllm`: generation on vLLM (`steering.generation.vllm.VllmEngine`), behind the batcher's surface.

vLLM schedules rows itself (continuous batching, chunked prefill, prefix caching), so this is not a
scheduler: each submitted request runs as its own task over `VllmEngine.generate`, streaming its pieces
into the same `Pending` the other batchers use. The promises kept are the batcher's: a bound on requests
held (503 `overloaded` beyond `max_batch_size + max_queue`), 503 while draining or in a `worker` replica,
a plan the model cannot take answers 422 alone, a client that leaves cancels its row.

vLLM starts in the background (tens of seconds); `/readyz` says unready until it has, and requests that
arrive meanwhile wait for it. Vectors are still computed on transformers, on the model this process loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable

from app.batcher import Pending, as_client_error, not_serving, put_fresh, shutting_down
from app.errors import ApiError
from app.metrics import Metrics
from app.settings import Settings
from steering.engine import Engine, GenerationRequest, GenerationResult
from steering.generation.vllm.engine import VllmEngine, VllmOptions
from steering.generation.vllm.model_folder import vllm_model_folder
from steering.model import default_cache_dir

log = logging.getLogger(__name__)


class VllmBatcher:
    def __init__(
        self,
        start_engine: Callable[[], Awaitable[VllmEngine]],
        max_batch: int,
        max_queue: int,
        metrics: Metrics,
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
        """On SIGTERM: rows in flight finish; newcomers get 503 so clients go elsewhere."""
        self.accepting = False

    def submit(self, request: GenerationRequest, stream: bool = False) -> Pending:
        if not self.serving:
            raise not_serving()
        if not self.accepting:
            raise shutting_down()
        if len(self._rows) >= self.max_held:
            raise ApiError(
                503, "overloaded", "too many requests are waiting; retry shortly", headers={"Retry-After": "1"}
            )
        if request.cancel is None:
            request.cancel = threading.Event()
        if request.seed is None:
            request.seed = random.getrandbits(63)
        loop = asyncio.get_running_loop()
        pending = Pending(request, loop.create_future(), asyncio.Queue() if stream else None)
        row = loop.create_task(self._run(pending))
        self._rows.add(row)
        row.add_done_callback(self._rows.discard)
        self.metrics.batch_size.observe(min(len(self._rows), self.max_batch))
        self.metrics.queue_depth.set(max(0, len(self._rows) - self.max_batch))
        return pending

    async def result(self, pending: Pending) -> GenerationResult:
        """Wait for a non-streaming request; a cancelled wait (client gone) cancels the row."""
        try:
            return await asyncio.shield(pending.future)
        except asyncio.CancelledError:
            pending.request.cancel.set()
            raise

    async def _run(self, pending: Pending) -> None:
        try:
            if self._starting is None:
                raise shutting_down()
            engine = await asyncio.shield(self._starting)
            result = None
            async for item in engine.generate(pending.request):
                if isinstance(item, GenerationResult):
                    result = item
                else:
                    put_fresh(pending, item)
            assert result is not None
            self._finish(pending, result)
        except asyncio.CancelledError:
            self._settle(pending, shutting_down())
            raise
        except Exception as exc:
            self._settle(pending, as_client_error(exc))

    def _finish(self, pending: Pending, result: GenerationResult) -> None:
        self.metrics.generated_tokens.inc(len(result.token_ids))
        result.timing["queue_s"] = time.perf_counter() - pending.enqueued_at - result.timing.get("total_s", 0.0)
        self._settle(pending, result if result.error is None else ApiError(422, "generation_failed", result.error))

    @staticmethod
    def _settle(pending: Pending, outcome: GenerationResult | BaseException) -> None:
        if not pending.future.done():
            if isinstance(outcome, BaseException):
                pending.future.set_exception(outcome)
            else:
                pending.future.set_result(outcome)
        if pending.deltas is not None:
            pending.deltas.put_nowait(None)

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


def build_vllm_batcher(engine: Engine, settings: Settings, metrics: Metrics) -> VllmBatcher:
    """vLLM on the weights `engine` (the transformers engine) loaded, so vectors computed here fit it."""
    lm = engine.lm
    window = getattr(lm.model.config, "max_position_embeddings", None)
    max_len = settings.max_prompt_tokens + settings.max_new_tokens
    options = VllmOptions(
        tensor_parallel_size=settings.vllm_tensor_parallel_size,
        max_num_seqs=settings.max_batch_size,
        max_num_batched_tokens=max(settings.prefill_chunk_tokens, settings.max_batch_size),
        max_model_len=min(max_len, window) if isinstance(window, int) else max_len,
        max_slots=settings.vllm_max_slots,
        kv_cache_bytes=settings.vllm_kv_cache_bytes,
        dtype=str(lm.dtype).removeprefix("torch."),
    )

    async def start() -> VllmEngine:
        folder = await asyncio.to_thread(vllm_model_folder, lm, settings.model, default_cache_dir())
        return await VllmEngine.start(
            folder, lm.tokenizer, eos_ids=engine.eos_ids, fingerprint=lm.fingerprint, options=options
        )

    return VllmBatcher(start, settings.max_batch_size, settings.max_queue, metrics, serving=settings.role != "worker")
