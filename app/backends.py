"""The generation backend `STEER_ENGINE` names, built once at start-up; the service uses only its interface
(`steering.generation.backend.GenerationBackend`)."""

from __future__ import annotations

import asyncio

from app.metrics import Metrics
from app.settings import Settings
from steering.generation.backend import GenerationBackend
from steering.generation.transformers.continuous import ContinuousBackend
from steering.generation.transformers.engine import Engine
from steering.generation.transformers.static import StaticBackend
from steering.model.loading import default_cache_dir
from steering.vectors.modes import MAX_PREFIX_TOKENS


def build_backend(engine: Engine, settings: Settings, metrics: Metrics) -> GenerationBackend:
    """`transformers` (continuous or, with `STEER_SCHEDULER=static`, static batches) or `vllm`.

    A `worker` replica builds one that does not serve (every request answers 503 `not_serving`)."""
    serving = settings.role != "worker"
    if settings.engine == "vllm":
        return _vllm_backend(engine, settings, metrics, serving)
    if settings.scheduler == "static":
        window_s = settings.batch_window_ms / 1000
        return StaticBackend(engine, settings.max_batch_size, window_s, settings.max_queue, metrics, serving=serving)
    return ContinuousBackend(
        engine,
        settings.max_batch_size,
        settings.max_queue,
        metrics,
        prefill_chunk_tokens=settings.prefill_chunk_tokens,
        priority_new_tokens=settings.priority_new_tokens,
        serving=serving,
    )


def _vllm_backend(engine: Engine, settings: Settings, metrics: Metrics, serving: bool) -> GenerationBackend:
    """vLLM on the weights the transformers engine loaded, so that vectors computed here fit it."""
    # vLLM is imported only when chosen: the default install does not have it.
    from steering.generation.vllm.backend import VllmBackend
    from steering.generation.vllm.engine import VllmEngine
    from steering.generation.vllm.model_folder import vllm_model_folder
    from steering.generation.vllm.options import VllmOptions

    lm = engine.lm
    window = lm.context_window
    # A KV prefix's placeholder tokens go ahead of the prompt (`steering.generation.vllm.kv_prefix`).
    prefix = min(MAX_PREFIX_TOKENS, settings.vllm_max_prefix_tokens)
    max_len = prefix + settings.max_prompt_tokens + settings.max_new_tokens
    options = VllmOptions(
        tensor_parallel_size=settings.vllm_tensor_parallel_size,
        max_num_seqs=settings.max_batch_size,
        max_num_batched_tokens=max(settings.prefill_chunk_tokens, settings.max_batch_size),
        max_model_len=min(max_len, window) if window is not None else max_len,
        max_slots=settings.vllm_max_slots,
        max_prefix_tokens=settings.vllm_max_prefix_tokens,
        kv_cache_bytes=settings.vllm_kv_cache_bytes,
        dtype=str(lm.dtype).removeprefix("torch."),
    )

    async def start() -> VllmEngine:
        folder = await asyncio.to_thread(vllm_model_folder, lm, settings.model, default_cache_dir())
        return await VllmEngine.start(
            folder, lm.tokenizer, eos_ids=engine.eos_ids, fingerprint=lm.fingerprint, options=options
        )

    return VllmBackend(start, settings.max_batch_size, settings.max_queue, metrics, serving=serving)
