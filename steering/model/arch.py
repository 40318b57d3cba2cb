"""Where the steerable parts of a causal LM live, per architecture family.

Every method and every hook goes through `resolve_architecture`, so supporting a new family
means adding one `Family` entry here.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    layers_path: str  # from the CausalLM module to the ModuleList of decoder layers
    attn_out_path: str  # from one decoder layer to the attention output projection


FAMILIES: tuple[Family, ...] = (
    Family(
        "llama",
        (
            "llama",
            "mistral",
            "mixtral",
            "qwen2",
            "qwen3",
            "qwen2_moe",
            "qwen3_moe",
            "olmoe",
            "gpt_oss",
            "gemma",
            "gemma2",
            "gemma3_text",
            "smollm3",
            "phi3",
            "olmo",
            "olmo2",
            "granite",
            "cohere",
            "starcoder2",
            "helium",
            "glm",
        ),
        "model.layers",
        "self_attn.o_proj",
    ),
    Family("phi", ("phi",), "model.layers", "self_attn.dense"),
    Family("gpt2", ("gpt2",), "transformer.h", "attn.c_proj"),
    Family("gptj", ("gptj",), "transformer.h", "attn.out_proj"),
    Family("falcon", ("falcon",), "transformer.h", "self_attention.dense"),
    Family("gpt_neox", ("gpt_neox",), "gpt_neox.layers", "attention.dense"),
)


class UnsupportedArchitecture(ValueError):
    pass


@dataclass(frozen=True)
class Architecture:
    """Resolved handles into one loaded model."""

    family: str
    layers: tuple[nn.Module, ...]
    attn_out: tuple[nn.Module, ...]  # the module whose *input* holds the concatenated per-head outputs
    num_heads: int
    head_dim: int
    hidden_size: int
    num_kv_heads: int  # key/value heads (fewer than num_heads with grouped or multi-query attention)
    # The forward's keyword for a KV cache: transformers 5.25 renamed `past_key_values` to `cache` (the old name
    # warns there and goes in 5.40); earlier releases, which vLLM pins, know only the old one.
    cache_keyword: str = "past_key_values"

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def cache_argument(self, cache: object) -> dict[str, object]:
        """The keyword argument that passes `cache` to this model's forward."""
        return {self.cache_keyword: cache}


def supported_model_types() -> list[str]:
    return sorted(t for f in FAMILIES for t in f.model_types)


def _get(root: nn.Module, dotted: str) -> nn.Module:
    module = root
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


def _family_for(model_type: str) -> Family:
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    raise UnsupportedArchitecture(
        f"model type {model_type!r} is not supported; supported: {', '.join(supported_model_types())}"
    )


def _in_features(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.in_features
    weight = module.weight  # GPT-2's Conv1D stores the weight as (in, out)
    return int(weight.shape[0])


def resolve_architecture(model: nn.Module) -> Architecture:
    config = model.config
    family = _family_for(config.model_type)
    layers = tuple(_get(model, family.layers_path))
    attn_out = tuple(_get(layer, family.attn_out_path) for layer in layers)
    num_heads = int(getattr(config, "num_attention_heads", None) or config.n_head)
    head_dim = _in_features(attn_out[0]) // num_heads
    hidden_size = int(getattr(config, "hidden_size", None) or config.n_embd)
    cache_keyword = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    kv_heads = _kv_heads(config, num_heads)
    return Architecture(family.name, layers, attn_out, num_heads, head_dim, hidden_size, kv_heads, cache_keyword)


def _kv_heads(config: object, num_heads: int) -> int:
    """Key/value heads by the config's name for them (Llama's, Falcon's, GPT-BigCode's multi-query flag)."""
    if getattr(config, "multi_query", False) and not getattr(config, "new_decoder_architecture", False):
        return 1
    for name in ("num_key_value_heads", "num_kv_heads", "n_head_kv"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return num_heads
