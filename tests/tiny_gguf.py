"""A tiny llama written as a GGUF file the way llama.cpp's converter writes one, for the GGUF loading tests.

The model is `tiny:llama` (`steering/model/tiny.py`). Its q/k rows are permuted as llama.cpp does (transformers
undoes that on load), the 2-D weights are stored as Q8_0 and the tokenizer as a byte-level BPE
(`tokenizer.ggml.model = gpt2`). `reference_model` is the same model with the Q8_0 rounding applied, so a
correct load reproduces its logits up to float error, and any mistake (names, permutation, dequantising,
tokenizer) shows.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import gguf
import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from steering.model.tiny import build_tiny_model

_QUANTIZED = gguf.GGMLQuantizationType.Q8_0
_TOKEN_NORMAL, _TOKEN_CONTROL = 1, 3


def _llama_cpp_permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's `LlamaModel.permute`: rotary halves interleaved within each head's rows."""
    return (
        weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _quantized(values: np.ndarray) -> bool:
    return values.ndim == 2 and values.shape[-1] % gguf.GGML_QUANT_SIZES[_QUANTIZED][0] == 0


def _merges(tokenizer: PreTrainedTokenizerFast) -> list[str]:
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    return [merge if isinstance(merge, str) else " ".join(merge) for merge in merges]


def tiny_llama() -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    return build_tiny_model("llama")


def reference_model(model: PreTrainedModel) -> PreTrainedModel:
    """`model` with every weight stored as Q8_0 rounded the way the file holds it."""
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in rounded.parameters():
            values = parameter.detach().numpy()
            if _quantized(values):
                restored = gguf.quants.dequantize(gguf.quants.quantize(values, _QUANTIZED), _QUANTIZED)
                parameter.copy_(torch.from_numpy(restored.reshape(values.shape)))
    return rounded


def write_tiny_llama_gguf(path: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast) -> Path:
    config = model.config
    layers, heads, kv_heads = config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_name("tiny-llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(layers)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(config.hidden_size // heads)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)

    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    special = set(tokenizer.all_special_tokens)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([token for token, _ in vocab])
    writer.add_token_types([_TOKEN_CONTROL if token in special else _TOKEN_NORMAL for token, _ in vocab])
    writer.add_token_merges(_merges(tokenizer))
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(False)
    writer.add_chat_template(tokenizer.chat_template)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, layers)
    for hf_name, tensor in model.state_dict().items():
        values = tensor.detach().numpy().astype(np.float32)
        if hf_name.endswith("q_proj.weight"):
            values = _llama_cpp_permute(values, heads)
        elif hf_name.endswith("k_proj.weight"):
            values = _llama_cpp_permute(values, kv_heads)
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"no GGUF name for {hf_name}")
        if _quantized(values):
            writer.add_tensor(name, gguf.quants.quantize(values, _QUANTIZED), raw_dtype=_QUANTIZED)
        else:
            writer.add_tensor(name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
