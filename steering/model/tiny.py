"""Tiny random models of every supported model type, built in code: for tests, demos and benchmarks offline.

The tokenizer is a byte-level BPE trained here on a fixed corpus, so every text is encodable and
nothing is downloaded. Weights are random but seeded: the same name always gives the same model.

Every type shares one set of sizes (2 layers, hidden 64, 4 heads, 2 key-value heads where the type has
them); `TINY_SPECS` adds what a type needs beyond that (a small head_dim where the default is huge, a
few experts instead of dozens) and turns on what makes a type different (sliding windows shorter than
the test prompts, experts, parallel attention), so the tests meet those code paths.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerFast

_SPECIAL = ["<pad>", "<s>", "</s>"]
_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
_CORPUS = [
    "Q: hot\nA: cold\n\nQ: big\nA: small\n\nQ: up\nA: down",
    "France Paris Spain Madrid Italy Rome Japan Tokyo Egypt Cairo",
    "cat dog bird fish horse apple banana cherry red green blue one two three four five",
    "the quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 , . : ; -> ! ?",
    "happy sad fast slow light dark open closed good bad early late yes no",
]

# Sliding windows in both regimes: shorter than most test prompts (layers drop keys while prefilling, decoding
# and re-running a cached prefix), and longer than them (the cache holds the prompt, but still counts tokens).
SHORT_WINDOW = 8
LONG_WINDOW = 64
HEAD_DIM = 16  # hidden 64 / 4 heads, for the types whose config fixes head_dim (to 128 or 256 by default)

_DECODER: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
}
_GPT_STYLE: dict[str, Any] = {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 512}
_MOE: dict[str, Any] = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32}
_FALCON: dict[str, Any] = {key: _DECODER[key] for key in ("hidden_size", "num_hidden_layers", "num_attention_heads")}
_ALTERNATE_LAYERS = {"layer_types": ["sliding_attention", "full_attention"]}


@dataclass(frozen=True)
class TinySpec:
    """How to build one tiny model, and what about its model type it exercises."""

    config: dict[str, Any]
    exercises: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # merged last (overrides the shared sizes)
    model_type: str | None = None  # for a variant of a type (its name is then `<type>_<variant>`)

    def kwargs(self) -> dict[str, Any]:
        return {**self.config, **self.extra}


def _decoder(exercises: str = "", **extra: Any) -> TinySpec:
    return TinySpec(_DECODER, exercises, extra)


TINY_SPECS: dict[str, TinySpec] = {
    "llama": _decoder("grouped-query attention"),
    "mistral": _decoder(f"sliding window {LONG_WINDOW} on every layer", sliding_window=LONG_WINDOW),
    "mixtral": _decoder(
        "mixture of experts (4 experts, top 2)", num_local_experts=4, num_experts_per_tok=2, intermediate_size=32
    ),
    "qwen2": _decoder("grouped-query attention, qkv bias"),
    "qwen3": _decoder("q/k norms", head_dim=HEAD_DIM),
    "qwen2_moe": _decoder(
        "mixture of experts (4 experts, top 2) with a shared expert", **_MOE, shared_expert_intermediate_size=64
    ),
    "qwen3_moe": _decoder("mixture of experts (4 experts, top 2), q/k norms", **_MOE, head_dim=HEAD_DIM),
    "olmoe": _decoder("mixture of experts (4 experts, top 2), q/k norms", num_experts=4, num_experts_per_tok=2),
    "gpt_oss": _decoder(
        f"mixture of experts (4 experts, top 2), attention sinks, sliding window {SHORT_WINDOW} on alternate layers",
        num_local_experts=4,
        num_experts_per_tok=2,
        head_dim=HEAD_DIM,
        max_position_embeddings=4096 * 32,  # what its YaRN rotary scaling (factor 32 over 4096) expects
        sliding_window=SHORT_WINDOW,
        **_ALTERNATE_LAYERS,
    ),
    "gemma": _decoder("scaled embeddings, (1 + w) norms", head_dim=HEAD_DIM),
    "gemma2": _decoder(
        f"sliding window {SHORT_WINDOW} on alternate layers (hybrid cache), post-norms, logit soft-capping",
        head_dim=HEAD_DIM,
        sliding_window=SHORT_WINDOW,
        **_ALTERNATE_LAYERS,
    ),
    "gemma3_text": _decoder(
        f"sliding window {LONG_WINDOW} on alternate layers (hybrid cache), post-norms, q/k norms",
        head_dim=HEAD_DIM,
        sliding_window=LONG_WINDOW,
        **_ALTERNATE_LAYERS,
    ),
    "smollm3": _decoder("a layer without rotary embeddings (NoPE)", no_rope_layers=[1, 0]),
    "phi": _decoder("parallel attention and MLP, partial rotary, `dense` output projection", num_key_value_heads=4),
    "phi3": _decoder("fused qkv projection"),
    "olmo": _decoder("non-parametric layer norm"),
    "olmo2": _decoder("post-norms, q/k norms"),
    "granite": _decoder(
        "embedding, residual, attention and logit multipliers",
        embedding_multiplier=2.0,
        residual_multiplier=0.5,
        attention_multiplier=0.2,
        logits_scaling=2.0,
    ),
    "cohere": _decoder("parallel attention and MLP, logit scale"),
    "starcoder2": _decoder(f"sliding window {SHORT_WINDOW} on every layer, biases", sliding_window=SHORT_WINDOW),
    "helium": _decoder("grouped-query attention", head_dim=HEAD_DIM),
    "glm": _decoder("partial rotary, fused gate/up projection", head_dim=HEAD_DIM),
    "gpt2": TinySpec(_GPT_STYLE, "fused qkv (Conv1D), learned positions"),
    "gpt_neox": TinySpec(
        {key: value for key, value in _DECODER.items() if key != "num_key_value_heads"},
        "fused qkv, parallel attention and MLP, partial rotary",
    ),
    "gptj": TinySpec(
        _GPT_STYLE, "parallel attention and MLP, partial rotary (interleaved), `out_proj`", {"rotary_dim": 8}
    ),
    "falcon": TinySpec(_FALCON, "multi-query attention, fused qkv, parallel attention and MLP (Falcon-7B)"),
    "falcon_new_decoder": TinySpec(
        _FALCON,
        "grouped-query fused qkv, two layer norms (Falcon-40B/180B, Falcon2)",
        {"new_decoder_architecture": True, "num_kv_heads": 2},
        model_type="falcon",
    ),
    "falcon_alibi": TinySpec(
        _FALCON,
        "ALiBi positions, multi-head attention, attention then MLP (Falcon-RW)",
        {"alibi": True, "multi_query": False, "parallel_attn": False, "bias": True},
        model_type="falcon",
    ),
}
# Names for `tiny:<name>`: one per supported model type, plus variants of a type whose checkpoints differ.
TINY_MODELS: tuple[str, ...] = tuple(TINY_SPECS)


def tiny_model_type(name: str) -> str:
    """The `config.model_type` of the tiny model `name` (a variant's name differs from its type)."""
    return TINY_SPECS[name].model_type or name


def build_tiny_tokenizer(vocab_size: int = 384) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS * 4, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>", padding_side="left"
    )
    wrapped.chat_template = _CHAT_TEMPLATE
    return wrapped


def tiny_config(name: str, vocab_size: int) -> PretrainedConfig:
    spec = TINY_SPECS.get(name)
    if spec is None:
        raise ValueError(f"tiny model must be one of {', '.join(TINY_MODELS)}, not {name!r}")
    common = {"vocab_size": vocab_size, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    return AutoConfig.for_model(tiny_model_type(name), **common, initializer_range=0.2, **spec.kwargs())


def build_tiny_model(name: str = "llama", seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    tokenizer = build_tiny_tokenizer()
    config = tiny_config(name, len(tokenizer))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval(), tokenizer
