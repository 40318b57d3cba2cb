"""`VllmEngine`: the project's generation requests on vLLM's in-process async engine (`AsyncLLM`), steered.

A `GenerationRequest` (prompt ids, steering terms with `TaskVector`s, sampling, seed, stop strings, the
tasks' `AnswerEnd`, a cancel event) becomes one vLLM request: the terms' vectors are loaded into the
workers' slots by content id (`slots.py`, `worker.SteeringWorkerExtension.steer_load`; requests waiting for
room are served in the order they came, `room_queue.py`), the plan travels in
`SamplingParams.extra_args` (`plan.py`), and the prompt carries a `cache_salt` derived from the plan so a
steered prompt never shares KV blocks with a plain or differently steered one. A KV prefix (context tuning)
puts one placeholder token per column ahead of the prompt ids, whose keys and values the workers replace
(`kv_prefix.py`). vLLM returns token ids only
(no detokenizing there); each goes through the transformers engine's own `RowState`, so end tokens, stop
strings, the answer end, the token limit and cancelling end a row exactly where the transformers engine
ends it, and the text is decoded the same way. A row ended on our side is aborted in vLLM.

A plan this engine cannot run raises `SteeringError` before anything reaches vLLM (the service answers
422), never a silently unsteered row.

vLLM runs compiled (the default with CUDA), with the steering ops installed at load (`graph_loader.py`; every
mode runs there), or eager with Python hooks (the default on a CPU; `VllmOptions.enforce_eager`,
`STEER_VLLM_ENFORCE_EAGER`). Either way the
engine starts only on the V1 model runner and only once `self_check.py` has seen a steered token differ from
the plain one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steering.generation.rows import GenerationRequest, GenerationResult, RowState
from steering.generation.vllm.options import VllmOptions
from steering.generation.vllm.plan import EXTRA_ARGS_KEY, PlannedTerm, cache_salt, encode_plan
from steering.generation.vllm.room_queue import RoomQueue
from steering.generation.vllm.self_check import check_steering_acts
from steering.generation.vllm.slots import Cost, Reservation, VectorSlots
from steering.steer.inject import SteeringError, SteeringTerm
from steering.steer.prefix import PrefixError, prefix_term
from steering.vectors.errors import VectorImportError
from steering.vectors.modes import mode_spec
from steering.vectors.task_vector import TaskVector, check_for_model

log = logging.getLogger(__name__)

WORKER_EXTENSION = "steering.generation.vllm.worker.SteeringWorkerExtension"
SUPPORTED_OPS = frozenset({"add", "add_norm", "replace", "head_mix", "kv_prefix"})  # token_steering, kv_prefix
SUPPORTED_POSITIONS = frozenset({"last", "from_last", "all", "before"})
_CANCEL_POLL_S = 0.05
PLACEHOLDER_ID = 0  # the token ahead of the prompt whose keys and values a KV prefix's column replaces (any id)


@dataclass(frozen=True)
class ModelDims:
    """The whole model's shape as the workers report it (`steering.vectors.modes.ModelShape`)."""

    num_layers: int
    hidden_size: int
    num_heads: int
    head_dim: int
    num_kv_heads: int


def vector_id(vector: TaskVector) -> str:
    """A vector's content id: the hash of its safetensors bytes (ids never change meaning)."""
    return hashlib.sha256(vector.to_bytes()).hexdigest()


class _VectorIds:
    """Content ids of the vectors seen lately, by object (a vector's bytes are hashed once while it lives)."""

    def __init__(self) -> None:
        self._ids: dict[int, tuple[weakref.ref[TaskVector], str, bytes]] = {}

    def get(self, vector: TaskVector) -> tuple[str, bytes]:
        entry = self._ids.get(id(vector))
        if entry is not None and entry[0]() is vector:
            return entry[1], entry[2]
        data = vector.to_bytes()
        content_id = hashlib.sha256(data).hexdigest()
        key = id(vector)
        self._ids[key] = (weakref.ref(vector, lambda _: self._ids.pop(key, None)), content_id, data)
        return content_id, data


class VllmEngine:
    """Generates `GenerationRequest`s on vLLM with per-request steering. Start with `VllmEngine.start`."""

    def __init__(
        self,
        llm: Any,
        tokenizer: Any,
        dims: ModelDims,
        *,
        fingerprint: str | None,
        eos_ids: set[int],
        options: VllmOptions,
        serves_prefixes: bool = True,
    ) -> None:
        self.llm, self.tokenizer, self.dims, self.fingerprint = llm, tokenizer, dims, fingerprint
        self.serves_prefixes = serves_prefixes  # the model's attention layers take KV prefixes (`kv_prefix.py`)
        self.eos_ids, self.options = eos_ids, options
        self._room = RoomQueue(VectorSlots(options.max_slots, options.max_prefix_tokens))
        self._ids = _VectorIds()
        self.in_flight = 0

    @classmethod
    async def start(
        cls,
        model_folder: str | Path,
        tokenizer: Any,
        *,
        eos_ids: set[int],
        fingerprint: str | None,
        options: VllmOptions | None = None,
    ) -> VllmEngine:
        """Start vLLM on `model_folder` with the steering extension in its workers, eager or compiled
        (`VllmOptions.enforce_eager`), and check that steering acts; `eos_ids` are the tokens that end a row (the
        transformers engine's `Engine.eos_ids`)."""
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        from steering.generation.vllm import graph_loader

        options = options or VllmOptions()
        eager = options.eager()
        compiled: dict[str, Any] = (
            {}
            if eager
            else {
                "load_format": graph_loader.LOAD_FORMAT,
                "additional_config": graph_loader.additional_config(options.max_slots, options.max_prefix_tokens),
            }
        )
        # GPUs default to the V2 model runner, which orders a batch's tokens otherwise (`worker.py` reads MRV1's);
        # a value set by the caller is kept, and `steer_install` refuses it.
        os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
        if options.dtype == "auto":
            raise ValueError("give vLLM the served model's dtype: its 'auto' runs float32 weights in bfloat16 on CPU")
        args = AsyncEngineArgs(
            model=str(model_folder),
            tokenizer=str(model_folder),
            dtype=options.dtype,
            enforce_eager=eager,
            enable_prefix_caching=options.enable_prefix_caching,
            max_num_seqs=options.max_num_seqs,
            max_num_batched_tokens=options.max_num_batched_tokens,
            max_model_len=options.max_model_len,
            kv_cache_memory_bytes=options.kv_cache_bytes,
            block_size=options.block_size,
            tensor_parallel_size=options.tensor_parallel_size,
            worker_extension_cls=WORKER_EXTENSION,
            seed=options.seed,
            disable_log_stats=True,
            **compiled,
        )
        llm = AsyncLLM.from_engine_args(args)
        try:
            if llm.vllm_config.use_v2_model_runner:
                raise RuntimeError("the steering plugin needs vLLM's V1 model runner: set VLLM_USE_V2_MODEL_RUNNER=0")
            info = (await llm.collective_rpc("steer_install", args=(options.max_slots, options.max_prefix_tokens)))[0]
            if info["form"] != ("eager" if eager else "compiled"):
                raise RuntimeError(f"vLLM steers in the {info['form']} form, not the one asked for")
            dims = ModelDims(
                info["num_layers"], info["hidden_size"], info["num_heads"], info["head_dim"], info["num_kv_heads"]
            )
            await check_steering_acts(llm, dims)
        except BaseException:
            llm.shutdown()
            raise
        log.info(
            "vLLM engine started on %s (%s, TP %d, %d slots)",
            model_folder,
            info["form"],
            info["tp_size"],
            options.max_slots,
        )
        return cls(
            llm,
            tokenizer,
            dims,
            fingerprint=fingerprint,
            eos_ids=set(eos_ids),
            options=options,
            serves_prefixes=bool(info["kv_prefix"]),
        )

    @property
    def capacity(self) -> int:
        """Requests vLLM decodes at once; more wait in vLLM's own queue."""
        return self.options.max_num_seqs

    def close(self) -> None:
        self.llm.shutdown()

    # ------------------------------------------------------------------------------------------ checks

    def plan(self, terms: Sequence[SteeringTerm]) -> tuple[list[PlannedTerm], dict[str, bytes], dict[str, Cost]]:
        """The request's plan by content id, the bytes of each vector it names, and what each KV prefix among them
        takes of the workers' room; `SteeringError` for a plan this engine cannot run on this model."""
        planned: list[PlannedTerm] = []
        blobs: dict[str, bytes] = {}
        costs: dict[str, Cost] = {}
        for term in terms:
            if term.strength == 0.0:
                continue
            self.check_vector(term.vector)
            layers = term.resolved_layers()
            for layer in layers:
                if not 0 <= layer < self.dims.num_layers:
                    raise SteeringError(f"layer {layer} is out of range: the model has {self.dims.num_layers}")
            content_id, data = self._ids.get(term.vector)
            blobs[content_id] = data
            if term.vector.prefix_tokens:
                costs[content_id] = (0, term.vector.prefix_tokens)
            planned.append(PlannedTerm(content_id, float(term.strength), tuple(layers)))
        try:
            prefix_term(terms, self.dims)
        except PrefixError as exc:
            raise SteeringError(str(exc)) from None
        vectors, columns = len(blobs) - len(costs), sum(c[1] for c in costs.values())
        if vectors > self.options.max_slots:
            raise SteeringError(
                f"the request names {vectors} vectors; this server holds at most {self.options.max_slots} at once"
            )
        if columns > self.options.max_prefix_tokens:
            raise SteeringError(
                f"the request's KV prefix takes {columns} columns; this server holds at most "
                f"{self.options.max_prefix_tokens} (STEER_VLLM_MAX_PREFIX_TOKENS)"
            )
        return planned, blobs, costs

    def check_vector(self, vector: TaskVector) -> None:
        try:
            spec = mode_spec(vector.mode)
        except ValueError as exc:
            raise SteeringError(str(exc)) from None
        if spec.site == "cache" and not self.serves_prefixes:
            raise SteeringError(
                "this model's attention layers on vLLM cannot take a KV prefix (a context_tuning task): each decoder "
                "layer needs one attention of the model's key width; serve it with STEER_ENGINE=transformers"
            )
        if spec.op not in SUPPORTED_OPS or spec.positions not in SUPPORTED_POSITIONS:
            raise SteeringError(f"injection mode {vector.mode!r} cannot run on the vLLM engine")
        if self.fingerprint is not None and vector.fingerprint != self.fingerprint:
            raise SteeringError(
                f"this vector was computed on model {vector.fingerprint}, not on the served model {self.fingerprint}"
            )
        try:
            check_for_model(vector, self.dims)
        except VectorImportError as exc:
            raise SteeringError(str(exc)) from None

    # ------------------------------------------------------------------------------------------ slots

    async def _hold(self, blobs: dict[str, bytes], costs: dict[str, Cost]) -> None:
        """Pin these vectors in the workers' room, loading them first where needed (waits its turn for room)."""

        async def load(reservation: Reservation) -> None:
            if reservation.evict:
                await self.llm.collective_rpc("steer_unload", args=(list(reservation.evict),))
            for content_id in reservation.load:
                await self.llm.collective_rpc("steer_load", args=(content_id, blobs[content_id]))

        await self._room.hold(blobs, costs, load)

    # ------------------------------------------------------------------------------------------ generation

    def sampling_params(self, request: GenerationRequest, plan: str | None) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        sampled = request.temperature > 0.0
        return SamplingParams(
            n=1,
            max_tokens=request.token_limit(),
            temperature=request.temperature if sampled else 0.0,
            top_p=request.top_p if sampled else 1.0,
            seed=request.seed if sampled else None,
            stop_token_ids=sorted(self.eos_ids),
            detokenize=False,  # text comes from RowState, as in the transformers engine
            output_kind=RequestOutputKind.DELTA,
            extra_args={EXTRA_ARGS_KEY: plan} if plan is not None else None,
        )

    async def generate(self, request: GenerationRequest) -> AsyncIterator[str | GenerationResult]:
        """Text pieces as they are decided, then the `GenerationResult` (always last)."""
        if not request.prompt_ids:
            raise ValueError("every request needs at least one prompt token")
        planned, blobs, costs = self.plan(request.steering)
        plan = encode_plan(planned)
        placeholders = [PLACEHOLDER_ID] * max((c[1] for c in costs.values()), default=0)  # the KV prefix's columns
        prompt: dict[str, Any] = {"prompt_token_ids": placeholders + list(request.prompt_ids)}
        if plan is not None:
            prompt["cache_salt"] = cache_salt(plan)
        params = self.sampling_params(request, plan)
        state = RowState(request, self.tokenizer, self.eos_ids)
        await self._hold(blobs, costs)
        self.in_flight += 1
        started = time.perf_counter()
        outputs = self.llm.generate(prompt, params, uuid.uuid4().hex)
        try:
            while state.finish is None:
                output = await _next_unless_cancelled(outputs, request.cancel)
                if output is None:
                    delta = state.end("cancelled")
                    if delta is not None and delta.text:
                        yield delta.text
                    break
                completion = output.outputs[0]
                for token in completion.token_ids:
                    delta = state.push(int(token))
                    if delta is not None and delta.text:
                        yield delta.text
                    if state.finish is not None:
                        break
                if output.finished and state.finish is None:
                    delta = state.end("length" if completion.finish_reason == "length" else "stop")
                    if delta is not None and delta.text:
                        yield delta.text
        finally:
            await outputs.aclose()  # aborts the vLLM request if it is still running
            self.in_flight -= 1
            await self._room.release(blobs)
        yield state.result(started, time.perf_counter())

    async def complete(self, request: GenerationRequest) -> GenerationResult:
        """`generate` without the pieces."""
        result = None
        async for item in self.generate(request):
            if isinstance(item, GenerationResult):
                result = item
        assert result is not None
        return result


async def _next_unless_cancelled(outputs: AsyncIterator[Any], cancel: Any) -> Any | None:
    """vLLM's next output, or None once `cancel` (a threading.Event) is set or the stream has ended."""
    step = asyncio.ensure_future(anext(outputs, None))
    while True:
        done, _ = await asyncio.wait({step}, timeout=_CANCEL_POLL_S)
        if done:
            return step.result()
        if cancel is not None and cancel.is_set():
            step.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await step
            return None
