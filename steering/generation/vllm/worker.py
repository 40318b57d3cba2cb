"""The plugin's half inside vLLM's workers: `SteeringWorkerExtension`, mixed into the worker class.

vLLM adds the class named by `worker_extension_cls` to its worker's bases; the front end calls its
methods on every rank with `collective_rpc` (`steer_install` once after start-up, then `steer_load` /
`steer_unload` as vectors come and go). Nothing of vLLM is patched on disk:

- `steer_install` hooks every decoder layer (its output, the residual stream) and every attention output
  projection (its input, the heads), and wraps the model runner's `_model_forward` so that each forward
  first maps its flattened tokens to their requests (`token_steering.StepSteering`). Dummy and profiling
  runs bypass `_model_forward`, so they see no steering.
- Vectors arrive as safetensors bytes (`TaskVector.to_bytes`, never pickle) under their content id; each
  rank keeps its own slice of the per-head tensors. The front end decides which ids are loaded
  (`slots.VectorSlots`): a plan only names loaded ids.

Python hooks only run in eager mode and on the V1 model runner (MRV1, whose `input_batch` orders the
flattened tokens); `steer_install` refuses anything else rather than serve unsteered rows.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from steering.generation.vllm.plan import EXTRA_ARGS_KEY, decode_plan
from steering.generation.vllm.token_steering import LayerPlan, StepRow, StepSteering, build_layer_plans
from steering.steer.inject import SteeringTerm
from steering.vectors.task_vector import TaskVector

log = logging.getLogger(__name__)

_PLAN_CACHE = 256  # parsed plans kept (a plan string is the same object for a request's whole life)
_EDITS_CACHE = 8  # batches' summed edits kept: a decode batch keeps its composition for many steps
_ATTENTION_OUT = ("o_proj", "dense", "out_proj")


@dataclass(frozen=True)
class RankShape:
    """What the edits are sized by on this rank: every layer, the whole residual, this rank's heads."""

    num_layers: int
    hidden_size: int
    num_heads: int  # on this rank
    head_dim: int
    first_head: int  # this rank's first head among all heads


class _RankSteering:
    """One rank's loaded vectors, caches, and the steering of the forward in progress (`step`)."""

    def __init__(self, runner: Any, shape: RankShape, max_slots: int) -> None:
        self.runner, self.shape, self.max_slots = runner, shape, max_slots
        self.vectors: dict[str, TaskVector] = {}
        self.step: StepSteering | None = None
        self._plans: OrderedDict[str, tuple[SteeringTerm, ...]] = OrderedDict()
        self._edits: OrderedDict[tuple[str, ...], dict[int, LayerPlan]] = OrderedDict()

    def load(self, vector_id: str, data: bytes) -> None:
        if hashlib.sha256(data).hexdigest() != vector_id:
            raise ValueError(f"vector {vector_id}: the bytes do not hash to their id")
        if vector_id in self.vectors:
            return
        if len(self.vectors) >= self.max_slots:
            raise RuntimeError(f"all {self.max_slots} steering slots are taken; unload one first")
        vector = TaskVector.from_bytes(data)
        first, count = self.shape.first_head, self.shape.num_heads
        sliced = {
            name: tensor if name == "residual" else tensor[:, first : first + count].contiguous()
            for name, tensor in vector.tensors.items()
        }
        self.vectors[vector_id] = replace(vector, tensors=sliced)

    def unload(self, vector_ids: list[str]) -> None:
        for vector_id in vector_ids:
            self.vectors.pop(vector_id, None)
        self._plans.clear()
        self._edits.clear()

    def _terms(self, plan: str) -> tuple[SteeringTerm, ...]:
        terms = self._plans.get(plan)
        if terms is None:
            terms = tuple(self._term(t.vector_id, t.strength, t.layers) for t in decode_plan(plan))
            self._plans[plan] = terms
            while len(self._plans) > _PLAN_CACHE:
                self._plans.popitem(last=False)
        self._plans.move_to_end(plan)
        return terms

    def _term(self, vector_id: str, strength: float, layers: tuple[int, ...]) -> SteeringTerm:
        vector = self.vectors.get(vector_id)
        if vector is None:  # the front end loads every vector before a plan names it: a bug, not a bad request
            raise RuntimeError(f"steering vector {vector_id} is not loaded on this rank")
        return SteeringTerm(vector, strength, layers)

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

    def step_from_runner(self) -> StepSteering | None:
        """This forward's steering, read from the MRV1 runner's persistent batch (None: no steered token)."""
        runner = self.runner
        batch = runner.input_batch
        num_reqs = batch.num_reqs
        counts = runner.num_scheduled_tokens.np[:num_reqs]
        plans: list[str] = []
        rows: list[StepRow] = []
        start = 0
        for i, request_id in enumerate(batch.req_ids[:num_reqs]):
            count = int(counts[i])
            params = runner.requests[request_id].sampling_params
            plan = (params.extra_args or {}).get(EXTRA_ARGS_KEY) if params is not None else None
            if plan and count:
                state = runner.requests[request_id]
                computed = int(batch.num_computed_tokens_cpu[i])
                plans.append(plan)
                rows.append(StepRow(start, count, computed, state.num_prompt_tokens))
            start += count
        if not rows:
            return None
        return StepSteering(self._layer_plans(tuple(plans)), rows, runner.device)


def _attention_out(layer: nn.Module) -> nn.Module:
    attention = getattr(layer, "self_attn", None) or getattr(layer, "attn", None)
    for name in _ATTENTION_OUT:
        module = getattr(attention, name, None)
        if isinstance(module, nn.Module):
            return module
    raise RuntimeError(f"no attention output projection found in {type(layer).__name__}")


def _decoder_layers(model: nn.Module) -> list[tuple[int, nn.Module]]:
    """This rank's decoder layers with their global indices (pipeline stages hold only some)."""
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise RuntimeError(f"{type(model).__name__} has no `model.layers`: not a decoder vLLM steering supports")
    return [(i, layer) for i, layer in enumerate(layers) if type(layer).__name__ != "PPMissingLayer"]


def _check_eager_mrv1(worker: Any) -> None:
    from vllm.config import CompilationMode
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    config = worker.vllm_config
    if not config.model_config.enforce_eager or config.compilation_config.mode != CompilationMode.NONE:
        raise RuntimeError(
            "steering hooks only run in eager mode: start vLLM with enforce_eager=True (a compiled model skips them)"
        )
    runner = worker.model_runner
    if getattr(config, "use_v2_model_runner", False) or not isinstance(runner, GPUModelRunner):
        raise RuntimeError(
            f"steering needs vLLM's V1 model runner (MRV1), not {type(runner).__name__}: set VLLM_USE_V2_MODEL_RUNNER=0"
        )


class SteeringWorkerExtension:
    """Methods vLLM mixes into its worker; called on every rank through `collective_rpc`."""

    def steer_install(self, max_slots: int) -> dict[str, int]:
        """Hook the model once; returns this rank's shape (the front end checks vectors against the whole)."""
        from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size

        worker: Any = self
        if getattr(worker, "_steering", None) is not None:
            return worker._steering_info
        _check_eager_mrv1(worker)
        runner = worker.model_runner
        config = worker.vllm_config.model_config.hf_config.get_text_config()
        heads = int(config.num_attention_heads)
        tp_size, tp_rank = get_tensor_model_parallel_world_size(), get_tensor_model_parallel_rank()
        local_heads = heads // tp_size
        shape = RankShape(
            num_layers=int(config.num_hidden_layers),
            hidden_size=int(config.hidden_size),
            num_heads=local_heads,
            head_dim=int(getattr(config, "head_dim", None) or config.hidden_size // heads),
            first_head=tp_rank * local_heads,
        )
        state = _RankSteering(runner, shape, max_slots)
        for index, layer in _decoder_layers(runner.get_model()):
            layer.register_forward_hook(_residual_hook(state, index))
            _attention_out(layer).register_forward_pre_hook(_heads_hook(state, index))
        forward = runner._model_forward

        def steered_forward(*args: Any, **kwargs: Any) -> Any:
            state.step = state.step_from_runner()
            try:
                return forward(*args, **kwargs)
            finally:
                state.step = None

        runner._model_forward = steered_forward
        worker._steering = state
        worker._steering_info = {
            "num_layers": shape.num_layers,
            "hidden_size": shape.hidden_size,
            "num_heads": heads,
            "head_dim": shape.head_dim,
            "tp_size": tp_size,
        }
        log.info("steering installed on rank %d of %d (%d slots)", tp_rank, tp_size, max_slots)
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
