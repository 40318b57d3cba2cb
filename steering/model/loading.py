"""Load a causal LM and its tokenizer: a hub id, a local folder, a packaged model or GGUF file, or a tiny test model."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from steering.model.arch import Architecture, resolve_architecture
from steering.model.gguf import is_gguf_path, local_gguf_folder
from steering.model.lock import ModelLock
from steering.model.packaged import DEFAULT_ALIAS, DEFAULT_PACKAGED_MODEL, find_packaged_model, packaged_model_folder

DEFAULT_MODEL = DEFAULT_ALIAS
DEFAULT_MODEL_NAME = DEFAULT_PACKAGED_MODEL.model_name
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

    @property
    def context_window(self) -> int | None:
        """How many positions the model has (past them, learned position embeddings fail the whole batch)."""
        config = self.model.config
        value = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        return value if isinstance(value, int) and value > 0 else None


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
    return packaged_model_folder(DEFAULT_PACKAGED_MODEL, cache_dir or default_cache_dir())


def prepared_source(name_or_path: str, cache_dir: Path | None = None) -> tuple[str | Path, str]:
    """What `from_pretrained` reads for `name_or_path`, and the model's name.

    A packaged model's short name (`default` included) or a local `.gguf` file is prepared once into a
    cached safetensors folder; a hub id or a folder is returned as it is.
    """
    cache = cache_dir or default_cache_dir()
    if (packaged := find_packaged_model(name_or_path)) is not None:
        return packaged_model_folder(packaged, cache), packaged.model_name
    if is_gguf_path(name_or_path):
        return local_gguf_folder(Path(name_or_path), cache), Path(name_or_path).stem
    return name_or_path, name_or_path


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
    """Load `default` (the packaged SmolLM2), another packaged model by its short name (`packaged.py`),
    a local `.gguf` file, `tiny:<family>`, a local folder or a hub id."""
    torch_device = pick_device(device)
    torch_dtype = pick_dtype(dtype, torch_device)
    if name_or_path.startswith(TINY_PREFIX):
        from steering.model.tiny import build_tiny_model

        model, tokenizer = build_tiny_model(name_or_path[len(TINY_PREFIX) :])
        name = name_or_path
    else:
        source, name = prepared_source(name_or_path, cache_dir)
        # A hub id downloads on first use (needs network); a local folder loads as is.
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(source, revision=revision, dtype=torch_dtype)
    return wrap_model(model.to(device=torch_device, dtype=torch_dtype), tokenizer, name)


def wrap_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str) -> LoadedModel:
    """A model already loaded (on its device, in its dtype) made ready for steering: eval mode, no gradients,
    its architecture resolved and fingerprinted under `name`, the tokenizer padding on the left."""
    model = model.eval()
    model.requires_grad_(False)
    return LoadedModel(
        model, _prepare_tokenizer(tokenizer), resolve_architecture(model), name, model_fingerprint(name, model)
    )
