"""Where steering acts in a model vLLM loaded, and this rank's share of it (both forms, eager and compiled)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

_ATTENTION_OUT = ("o_proj", "dense", "out_proj")


@dataclass(frozen=True)
class RankShape:
    """What the edits are sized by on this rank: every layer, the whole residual, this rank's heads."""

    num_layers: int
    hidden_size: int
    num_heads: int  # on this rank
    head_dim: int
    first_head: int  # this rank's first head among all heads
    all_heads: int
    tp_size: int
    num_kv_heads: int  # key-value heads on this rank (what its KV cache and a KV prefix's slice hold)
    first_kv_head: int
    all_kv_heads: int


def rank_shape(vllm_config: Any) -> RankShape:
    """This rank's shape under tensor parallelism (heads are split across ranks, the residual is whole)."""
    from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size

    config = vllm_config.model_config.hf_config.get_text_config()
    heads = int(config.num_attention_heads)
    tp_size, tp_rank = get_tensor_model_parallel_world_size(), get_tensor_model_parallel_rank()
    local_heads = heads // tp_size
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    first_kv, local_kv = rank_kv_heads(kv_heads, tp_size, tp_rank)
    return RankShape(
        num_layers=int(config.num_hidden_layers),
        hidden_size=int(config.hidden_size),
        num_heads=local_heads,
        head_dim=int(getattr(config, "head_dim", None) or config.hidden_size // heads),
        first_head=tp_rank * local_heads,
        all_heads=heads,
        tp_size=tp_size,
        num_kv_heads=local_kv,
        first_kv_head=first_kv,
        all_kv_heads=kv_heads,
    )


def rank_kv_heads(total: int, tp_size: int, tp_rank: int) -> tuple[int, int]:
    """(first, count) of the key-value heads a rank holds: vLLM splits them over the ranks or, with fewer heads
    than ranks, gives each rank one, shared by `tp_size // total` ranks."""
    if total >= tp_size:
        count = total // tp_size
        return tp_rank * count, count
    return tp_rank // (tp_size // total), 1


def attention_out(layer: nn.Module) -> nn.Module:
    """A decoder layer's attention output projection (its input holds the heads' outputs side by side)."""
    attention = getattr(layer, "self_attn", None) or getattr(layer, "attn", None)
    for name in _ATTENTION_OUT:
        module = getattr(attention, name, None)
        if isinstance(module, nn.Module):
            return module
    raise RuntimeError(f"no attention output projection found in {type(layer).__name__}")


def decoder_layers(model: nn.Module) -> list[tuple[int, nn.Module]]:
    """This rank's decoder layers with their global indices (pipeline stages hold only some)."""
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise RuntimeError(f"{type(model).__name__} has no `model.layers`: not a decoder vLLM steering supports")
    return [(i, layer) for i, layer in enumerate(layers) if type(layer).__name__ != "PPMissingLayer"]
