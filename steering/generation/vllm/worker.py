"""The plugin's half inside vLLM's workers: `SteeringWorkerExtension`, mixed into the worker class.

vLLM adds the class named by `worker_extension_cls` to its worker's bases; the front end calls its
methods on every rank with `collective_rpc` (`steer_install` once after start-up, then `steer_load` /
`steer_unload` as vectors come and go). Nothing of vLLM is patched on disk. Two forms:

- eager (`enforce_eager`): `steer_install` adds Python hooks to every decoder layer (its output, the residual
  stream) and every attention output projection (its input, the heads); each forward, the hooks apply
  `token_steering.StepSteering`'s edits to the steered requests' tokens;
- compiled: the model was loaded with `graph_loader`'s ops already in it (vLLM compiled them into its graph);
  each forward first rewrites the persistent buffers they read (`graph_steering.GraphSteering`).

KV prefixes take the same path in both forms (`kv_prefix.py`: tables and a pre-hook on every attention layer,
installed at load when compiled, by `steer_install` when eager); they are held by columns, not in a slot.

Either way `steer_install` wraps the model runner's `_model_forward`, which maps each forward's flattened
tokens to their requests; dummy and profiling runs bypass it and see no steering. Vectors arrive as
safetensors bytes (`TaskVector.to_bytes`, never pickle) under their content id; each rank keeps its own
slice of the per-head tensors. The front end decides which ids are loaded (`slots.VectorSlots`): a plan only
names loaded ids.

Both forms need the V1 model runner (MRV1, whose `input_batch` orders the flattened tokens), and a compiled
model needs the ops installed at load; `steer_install` refuses anything else rather than serve unsteered rows.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from dataclasses import replace
from typing import Any

from torch import nn

from steering.generation.vllm import graph_loader, kv_prefix
from steering.generation.vllm.graph_steering import GraphSteering
from steering.generation.vllm.kv_prefix import PrefixWriter
from steering.generation.vllm.model_parts import RankShape, attention_out, decoder_layers, rank_shape
from steering.generation.vllm.plan import EXTRA_ARGS_KEY, decode_plan
from steering.generation.vllm.token_steering import LayerPlan, StepRow, StepSteering, build_layer_plans
from steering.steer.inject import SteeringTerm
from steering.vectors.modes import PREFIX_TENSORS
from steering.vectors.task_vector import TaskVector

log = logging.getLogger(__name__)

_PLAN_CACHE = 256  # parsed plans kept (a plan string is the same object for a request's whole life)
_EDITS_CACHE = 8  # batches' summed edits kept: a decode batch keeps its composition for many steps


class _RankSteering:
    """One rank's loaded vectors, caches, and the steering of the forward in progress (`step`)."""

    def __init__(self, runner: Any, shape: RankShape, max_slots: int) -> None:
        self.runner, self.shape, self.max_slots = runner, shape, max_slots
        self.vectors: dict[str, TaskVector] = {}
        self.step: StepSteering | None = None
        self.graph: GraphSteering | None = None  # the compiled form's buffers, when the model has them
        self.prefixes: PrefixWriter | None = None  # KV prefixes, in either form
        self._plans: OrderedDict[str, tuple[SteeringTerm, ...]] = OrderedDict()
        self._edits: OrderedDict[tuple[str, ...], dict[int, LayerPlan]] = OrderedDict()
        self._prefix_of: dict[str, tuple[str, float] | None] = {}  # plan -> its KV prefix's id and strength

    def load(self, vector_id: str, data: bytes) -> None:
        if hashlib.sha256(data).hexdigest() != vector_id:
            raise ValueError(f"vector {vector_id}: the bytes do not hash to their id")
        if vector_id in self.vectors:
            return
        vector = TaskVector.from_bytes(data)
        shape = self.shape
        if vector.prefix_tokens:  # held in the prefix tables, by columns: not a slot
            if self.prefixes is None:  # the front end refuses KV prefixes for such a model: a bug, not a bad request
                raise RuntimeError("this model's attention layers take no KV prefix")
            first, count = shape.first_kv_head, shape.num_kv_heads
            sliced = {name: vector.tensors[name][:, first : first + count].contiguous() for name in PREFIX_TENSORS}
            mine = replace(vector, tensors=sliced)
            self.prefixes.load(vector_id, mine)
            self.vectors[vector_id] = mine
            return
        if sum(not v.prefix_tokens for v in self.vectors.values()) >= self.max_slots:
            raise RuntimeError(f"all {self.max_slots} steering slots are taken; unload one first")
        first, count = shape.first_head, shape.num_heads
        sliced = {
            name: tensor if name == "residual" else tensor[:, first : first + count].contiguous()
            for name, tensor in vector.tensors.items()
        }
        self.vectors[vector_id] = replace(vector, tensors=sliced)
        if self.graph is not None:
            self.graph.load(vector_id, self.vectors[vector_id])

    def unload(self, vector_ids: list[str]) -> None:
        for vector_id in vector_ids:
            self.vectors.pop(vector_id, None)
        if self.graph is not None:
            self.graph.unload(vector_ids)
        if self.prefixes is not None:
            self.prefixes.unload(vector_ids)
        self._plans.clear()
        self._edits.clear()
        self._prefix_of.clear()

    def _terms(self, plan: str) -> tuple[SteeringTerm, ...]:
        terms = self._plans.get(plan)
        if terms is None:
            terms = tuple(SteeringTerm(self._vector(t.vector_id), t.strength, t.layers) for t in decode_plan(plan))
            self._plans[plan] = terms
            while len(self._plans) > _PLAN_CACHE:
                self._plans.popitem(last=False)
        self._plans.move_to_end(plan)
        return terms

    def _vector(self, vector_id: str) -> TaskVector:
        vector = self.vectors.get(vector_id)
        if vector is None:  # the front end loads every vector before a plan names it: a bug, not a bad request
            raise RuntimeError(f"steering vector {vector_id} is not loaded on this rank")
        return vector

    def _layer_plans(self, plans: tuple[str, ...]) -> dict[int, LayerPlan]:
        layers = self._edits.get(plans)
        if layers is None:
            runner = self.runner
            layers = build_layer_plans([self._terms(p) for p in plans], self.shape, runner.device, runner.dtype)
            self._edits[plans] = layers
            while len(self._edits) > _EDITS_CACHE:
                self._edits.popitem(last=False)
        self._edits.move_to_end(plans)
        return layers

    def step_from_runner(self, rows: list[tuple[str, StepRow]]) -> StepSteering | None:
        """This forward's steering in the eager form (None: no steered token)."""
        if not rows:
            return None
        plans = tuple(plan for plan, _ in rows)
        return StepSteering(self._layer_plans(plans), [row for _, row in rows], self.runner.device)

    def prefix_rows(self, rows: list[tuple[str, StepRow]]) -> list[tuple[str, float, StepRow]]:
        """The steered requests of this forward whose plan holds a KV prefix: (its id, strength, the row)."""
        found = []
        for plan, row in rows:
            if plan not in self._prefix_of:
                if len(self._prefix_of) >= _PLAN_CACHE:
                    self._prefix_of.clear()
                terms = [t for t in decode_plan(plan) if self._vector(t.vector_id).prefix_tokens]
                self._prefix_of[plan] = (terms[0].vector_id, terms[0].strength) if terms else None
            prefix = self._prefix_of[plan]
            if prefix is not None:
                found.append((*prefix, row))
        return found


def scheduled_rows(runner: Any) -> list[tuple[str, StepRow]]:
    """The steered requests of this forward with their plans, read from the MRV1 runner's persistent batch."""
    batch = runner.input_batch
    num_reqs = batch.num_reqs
    counts = runner.num_scheduled_tokens.np[:num_reqs]
    rows: list[tuple[str, StepRow]] = []
    start = 0
    for i, request_id in enumerate(batch.req_ids[:num_reqs]):
        count = int(counts[i])
        state = runner.requests[request_id]
        params = state.sampling_params
        plan = (params.extra_args or {}).get(EXTRA_ARGS_KEY) if params is not None else None
        if plan and count:
            computed = int(batch.num_computed_tokens_cpu[i])
            rows.append((plan, StepRow(start, count, computed, state.num_prompt_tokens)))
        start += count
    return rows


def _check_runner(worker: Any, compiled_form: bool) -> None:
    """MRV1, and a compiled model only with the compiled form's ops in it."""
    from vllm.config import CompilationMode
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    config = worker.vllm_config
    runner = worker.model_runner
    if getattr(config, "use_v2_model_runner", False) or not isinstance(runner, GPUModelRunner):
        raise RuntimeError(
            f"steering needs vLLM's V1 model runner (MRV1), not {type(runner).__name__}: set VLLM_USE_V2_MODEL_RUNNER=0"
        )
    eager = config.model_config.enforce_eager and config.compilation_config.mode == CompilationMode.NONE
    if not (eager or compiled_form):
        raise RuntimeError(
            "a compiled model skips steering hooks added after start-up: start vLLM with "
            f"load_format={graph_loader.LOAD_FORMAT!r} (the compiled form) or enforce_eager=True"
        )


class SteeringWorkerExtension:
    """Methods vLLM mixes into its worker; called on every rank through `collective_rpc`."""

    def steer_install(self, max_slots: int, max_prefix_tokens: int) -> dict[str, Any]:
        """Set steering up once; returns the whole model's shape (the front end checks vectors against it) and
        the form in use."""
        worker: Any = self
        if getattr(worker, "_steering", None) is not None:
            return worker._steering_info
        runner = worker.model_runner
        model = runner.get_model()
        tables = graph_loader.installed_tables(model)
        _check_runner(worker, compiled_form=tables is not None)
        shape = rank_shape(worker.vllm_config)
        state = _RankSteering(runner, shape, max_slots)
        if tables is not None:
            if tables.slots != max_slots + 1:
                raise RuntimeError(f"the steering tables hold {tables.slots - 1} vectors, not {max_slots}")
            prefix_tables = kv_prefix.installed(model)
            if prefix_tables is not None and prefix_tables.capacity != max_prefix_tokens:
                raise RuntimeError(f"the compiled model's KV-prefix tables hold {prefix_tables.capacity} columns")
        else:
            for index, layer in decoder_layers(model):
                layer.register_forward_hook(_residual_hook(state, index))
                attention_out(layer).register_forward_pre_hook(_heads_hook(state, index))
            attentions = kv_prefix.attention_layers(decoder_layers(model), shape.num_kv_heads * shape.head_dim)
            prefix_tables = None
            if attentions is not None:
                prefix_tables = graph_loader.prefix_tables(worker.vllm_config, max_prefix_tokens, runner.device)
                kv_prefix.install(model, attentions, prefix_tables, eager=True)
        prefixes = state.prefixes = PrefixWriter(prefix_tables) if prefix_tables is not None else None
        if tables is not None:
            max_plans = int(worker.vllm_config.scheduler_config.max_num_seqs)
            state.graph = GraphSteering(tables, max_plans, prefixes if prefixes is not None else ())

        def begin() -> None:
            rows = scheduled_rows(runner)
            if state.graph is not None:
                state.graph.begin(rows)
            else:
                state.step = state.step_from_runner(rows)
            if prefixes is not None:
                prefixes.begin(state.prefix_rows(rows))

        def end() -> None:
            if prefixes is not None:
                prefixes.end()
            if state.graph is not None:
                state.graph.end()
            state.step = None

        forward = runner._model_forward

        def steered_forward(*args: Any, **kwargs: Any) -> Any:
            try:  # `end` undoes whatever part of `begin` ran
                begin()
                return forward(*args, **kwargs)
            finally:
                end()

        runner._model_forward = steered_forward
        worker._steering = state
        worker._steering_info = {
            "num_layers": shape.num_layers,
            "hidden_size": shape.hidden_size,
            "num_heads": shape.all_heads,
            "head_dim": shape.head_dim,
            "num_kv_heads": shape.all_kv_heads,
            "kv_prefix": prefixes is not None,
            "tp_size": shape.tp_size,
            "form": "compiled" if tables is not None else "eager",
        }
        log.info(
            "steering (%s form) installed on a rank of %d (%d slots, %d KV-prefix columns)",
            worker._steering_info["form"],
            shape.tp_size,
            max_slots,
            max_prefix_tokens,
        )
        return worker._steering_info

    def steer_load(self, vector_id: str, data: bytes) -> None:
        self._steering_state().load(vector_id, data)

    def steer_unload(self, vector_ids: list[str]) -> None:
        self._steering_state().unload(vector_ids)

    def steer_loaded(self) -> list[str]:
        return sorted(self._steering_state().vectors)

    def _steering_state(self) -> _RankSteering:
        state = getattr(self, "_steering", None)
        if state is None:
            raise RuntimeError("steering is not installed on this worker (call steer_install first)")
        return state


def _residual_hook(state: _RankSteering, layer: int):
    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        step = state.step
        if step is None:
            return None
        if isinstance(output, tuple):
            hidden, residual = step.edit_residual(layer, output[0], output[1] if len(output) > 1 else None)
            return (hidden, residual, *output[2:]) if len(output) > 1 else (hidden,)
        return step.edit_residual(layer, output, None)[0]

    return hook


def _heads_hook(state: _RankSteering, layer: int):
    def hook(module: nn.Module, args: tuple[Any, ...]) -> Any:
        step = state.step
        if step is None:
            return None
        heads = step.edit_heads(layer, args[0])
        return None if heads is None else (heads, *args[1:])

    return hook
