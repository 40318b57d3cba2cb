"""Tiny random models of each supported family, built in code: for tests, demos and benchmarks offline.

The tokenizer is a byte-level BPE trained here on a fixed corpus, so every text is encodable and
nothing is downloaded. Weights are random but seeded: the same name always gives the same model.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

TINY_FAMILIES = ("llama", "qwen2", "gpt2", "gpt_neox")
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


def tiny_config(family: str, vocab_size: int) -> PretrainedConfig:
    common = {
        "vocab_size": vocab_size,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "initializer_range": 0.2,
    }
    decoder = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 512,
        **common,
    }
    if family == "llama":
        return LlamaConfig(num_key_value_heads=2, **decoder)
    if family == "qwen2":
        return Qwen2Config(num_key_value_heads=2, **decoder)
    if family == "gpt2":
        return GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=512, **common)
    if family == "gpt_neox":
        return GPTNeoXConfig(**decoder)
    raise ValueError(f"tiny model family must be one of {', '.join(TINY_FAMILIES)}, not {family!r}")


def build_tiny_model(family: str = "llama", seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    tokenizer = build_tiny_tokenizer()
    config = tiny_config(family, len(tokenizer))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval(), tokenizer
