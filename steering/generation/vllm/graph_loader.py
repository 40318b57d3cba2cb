"""Installs the compiled form's ops (`graph_ops.py`) while vLLM loads the model, before it compiles it.

vLLM compiles (and on GPUs captures CUDA graphs of) the model after loading it, and hooks added after that
never run. So the engine starts vLLM with `load_format=LOAD_FORMAT`: vLLM's own loader reads the weights,
then this one adds a `SteeringTables` module to the model and a forward hook to every decoder layer and
attention output projection, and `kv_prefix`'s tables and pre-hook to every attention layer, each hook a
fixed sequence of tensor ops that torch.compile traces into the graph. This module registers the loader when
imported; the worker extension (`worker.py`) imports it, and vLLM imports the extension in every worker
before it loads the model.

vLLM keys its compile cache by its config, not by these ops, and would otherwise load a stock model's
artifact (ops absent: every row plain): `additional_config` carries a key of ours, and enters the hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

from torch import nn
from vllm.model_executor.model_loader import register_model_loader
from vllm.model_executor.model_loader.default_loader import DefaultModelLoader

from steering.generation.vllm import kv_prefix
from steering.generation.vllm.graph_ops import LayerSteering, SteeringTables, heads_hook, residual_hook
from steering.generation.vllm.model_parts import attention_out, decoder_layers, rank_shape

LOAD_FORMAT = "steering"
CONFIG_KEY = "steering"


def _ops_version() -> str:
    """Changes whenever the code traced into the graph does."""
    here = Path(__file__).parent
    traced = ("graph_ops.py", "kv_prefix.py")
    return hashlib.sha256(b"".join((here / name).read_bytes() for name in traced)).hexdigest()[:16]


def additional_config(max_slots: int, max_prefix_tokens: int) -> dict[str, Any]:
    """vLLM's `additional_config` for the compiled form: the loader's sizes, and a compile-cache key of ours."""
    return {CONFIG_KEY: {"ops": _ops_version(), "max_slots": max_slots, "max_prefix_tokens": max_prefix_tokens}}


def installed_tables(model: nn.Module) -> SteeringTables | None:
    tables = getattr(model, "steering_tables", None)
    return tables if isinstance(tables, SteeringTables) else None


def prefix_tables(vllm_config: Any, capacity: int, device: Any) -> kv_prefix.PrefixTables:
    """The KV-prefix tables of this rank (`kv_prefix.py`), sized by vLLM's config."""
    shape = rank_shape(vllm_config)
    return kv_prefix.PrefixTables(
        num_layers=shape.num_layers,
        kv_width=shape.num_kv_heads * shape.head_dim,
        capacity=capacity,
        max_tokens=int(vllm_config.scheduler_config.max_num_batched_tokens),
        dtype=vllm_config.model_config.dtype,
        device=device,
    )


def install(model: nn.Module, vllm_config: Any) -> SteeringTables:
    """Add the tables and the hooks to a loaded model (every layer, every attention output projection, every
    attention layer's keys and values)."""
    settings = vllm_config.additional_config[CONFIG_KEY]
    shape = rank_shape(vllm_config)
    scheduler = vllm_config.scheduler_config
    first = next(iter(model.parameters()))
    tables = SteeringTables(
        num_layers=shape.num_layers,
        hidden_size=shape.hidden_size,
        num_heads=shape.num_heads,
        head_dim=shape.head_dim,
        max_slots=int(settings["max_slots"]),
        max_tokens=int(scheduler.max_num_batched_tokens),
        max_plans=int(scheduler.max_num_seqs),
        dtype=vllm_config.model_config.dtype,
        device=first.device,
    )
    model.steering_tables = tables
    for index, layer in decoder_layers(model):
        layer.steering = LayerSteering(tables, index)
        layer.register_forward_hook(residual_hook)
        out = attention_out(layer)
        out.steering = LayerSteering(tables, index)
        out.register_forward_pre_hook(heads_hook)
    attentions = kv_prefix.attention_layers(decoder_layers(model), shape.num_kv_heads * shape.head_dim)
    if attentions is not None:  # a model whose layers cannot take a KV prefix gets no tables
        capacity = int(settings["max_prefix_tokens"])
        kv_prefix.install(model, attentions, prefix_tables(vllm_config, capacity, first.device), eager=False)
    return tables


@register_model_loader(LOAD_FORMAT)
class SteeringModelLoader(DefaultModelLoader):
    """vLLM's default loader (safetensors or .bin as "auto" finds them), then `install`."""

    def __init__(self, load_config: Any) -> None:
        super().__init__(dataclasses.replace(load_config, load_format="auto"))

    def load_model(self, vllm_config: Any, model_config: Any, prefix: str = "") -> nn.Module:
        model = super().load_model(vllm_config, model_config, prefix)
        install(model, vllm_config)
        return model
