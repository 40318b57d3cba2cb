"""In-process measurements: steered decode cost, steered zero-shot vs few-shot prompts, peers' hooks.

Decode cost per token excludes the prefill: (time of N new tokens - time of 1 new token) / (N - 1), batch 1,
greedy, end-of-sequence ignored so every run makes exactly N tokens.
"""

from __future__ import annotations

import contextlib
import importlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor
from transformers import DynamicCache

from scripts.bench_common import interleaved, median, paired_ratios, timed
from steering.generation.rows import GenerationRequest, GenerationResult
from steering.generation.transformers.engine import Engine
from steering.model.loading import LoadedModel
from steering.steer.inject import SteeringTerm
from steering.tasks.templates import few_shot_prompt, render_query, stop_strings
from steering.vectors.modes import ANSWER_MIX_TENSORS, HEAD_MIX_TENSORS
from steering.vectors.task_vector import TaskVector
from steering.wire.protocol import Demonstration

DECODE_PROMPT = "Q: The weather today is hot and the wind is strong. What is the opposite of hot?\nA:"


def fixed_length_engine(lm: LoadedModel) -> Engine:
    """An engine that never stops at end-of-sequence, so a run makes exactly max_new_tokens tokens."""
    engine = Engine(lm)
    engine.eos_ids = set()
    return engine


def engine_run(engine: Engine, prompt_ids: list[int], terms: Sequence[SteeringTerm], tokens: int) -> float:
    request = GenerationRequest(prompt_ids=list(prompt_ids), steering=tuple(terms), max_new_tokens=tokens)
    return timed(lambda: engine.generate([request]))


def per_token(run: Callable[[int], float], tokens: int) -> Callable[[], float]:
    """One sample of decode seconds per token: (t(N) - t(1)) / (N - 1)."""

    def sample() -> float:
        one = run(1)
        many = run(tokens)
        return (many - one) / (tokens - 1)

    return sample


@dataclass
class DecodeResult:
    per_token_s: dict[str, list[float]]
    baseline: str

    def ratio(self, name: str) -> float:
        return median(paired_ratios(self.per_token_s[name], self.per_token_s[self.baseline]))

    def ms(self, name: str) -> float:
        return median(self.per_token_s[name]) * 1000

    def detail(self, name: str) -> dict[str, object]:
        return {
            "ms_per_token": round(self.ms(name), 3),
            "baseline_ms_per_token": round(self.ms(self.baseline), 3),
            "ratios_per_rep": [
                round(r, 4) for r in paired_ratios(self.per_token_s[name], self.per_token_s[self.baseline])
            ],
            "ms_per_rep": [round(v * 1000, 3) for v in self.per_token_s[name]],
            # the fastest repetition of each is the one least disturbed by other processes
            "ratio_of_fastest": round(min(self.per_token_s[name]) / min(self.per_token_s[self.baseline]), 4),
        }


def soft_injection_modes(vector: TaskVector) -> dict[str, TaskVector]:
    """A soft-injection vector as `soft_injection` (last prompt token only) and `soft_injection_answer` (also
    every answer token): the answer gates are measured even where the held-out split did not keep them (the
    second mix reuses the first's tensors, the same cost)."""
    last = replace(vector, mode="head_mix_last", tensors={k: vector.tensors[k] for k in HEAD_MIX_TENSORS})
    if vector.mode == "head_mix_answer":
        return {"soft_injection": last, "soft_injection_answer": vector}
    answer_tensors = {
        **last.tensors,
        **{answer: vector.tensors[name] for name, answer in zip(HEAD_MIX_TENSORS, ANSWER_MIX_TENSORS, strict=True)},
    }
    return {
        "soft_injection": last,
        "soft_injection_answer": replace(vector, mode="head_mix_answer", tensors=answer_tensors),
    }


def measure_engine_decode(
    lm: LoadedModel,
    plans: dict[str, Sequence[SteeringTerm]],
    tokens: int,
    reps: int,
    log: Callable[[str], None],
) -> DecodeResult:
    """Engine.generate per-token decode time for each steering plan ('unsteered' is added), interleaved."""
    engine = fixed_length_engine(lm)
    prompt_ids = engine.encode(DECODE_PROMPT)
    runs: dict[str, Callable[[], float]] = {}
    for name, terms in {"unsteered": (), **plans}.items():
        runs[name] = per_token(lambda n, terms=terms: engine_run(engine, prompt_ids, terms, n), tokens)
    samples = interleaved(runs, reps, on_rep=lambda r: log(f"  decode rep {r + 1}/{reps}"))
    return DecodeResult(samples, "unsteered")


# ------------------------------------------------------------------------------------------ few-shot


@dataclass
class IclResult:
    first_token_ratio: float
    full_answer_ratio: float
    detail: dict[str, object]


def measure_icl(
    lm: LoadedModel,
    vector: TaskVector,
    strength: float,
    shots: Sequence[Demonstration],
    queries: Sequence[Demonstration],
    max_new_tokens: int,
    reps: int,
    log: Callable[[str], None],
) -> IclResult:
    """Steered zero-shot vs k-shot prompting on the same queries: time to first token and to the full answer."""
    engine = Engine(lm)
    template = vector.template
    stops = stop_strings(template)
    term = (SteeringTerm(vector, strength),)
    zero = [engine.encode(render_query(template, q.input)) for q in queries]
    few = [engine.encode(few_shot_prompt(template, shots, q.input)) for q in queries]

    def run(prompts: list[list[int]], terms: Sequence[SteeringTerm], tokens: int) -> list[GenerationResult]:
        out = []
        for ids in prompts:
            request = GenerationRequest(prompt_ids=ids, steering=tuple(terms), max_new_tokens=tokens, stop=stops)
            out.append(engine.generate([request])[0])
        return out

    results: dict[str, list[list[GenerationResult]]] = {"steered_zero_shot": [], "few_shot": [], "plain": []}

    def measure(
        name: str, prompts: list[list[int]], terms: Sequence[SteeringTerm], tokens: int = max_new_tokens
    ) -> Callable[[], float]:
        def once() -> float:
            results[name].append(run(prompts, terms, tokens))
            return 0.0

        return once

    interleaved(
        {
            "steered_zero_shot": measure("steered_zero_shot", zero, term),
            "few_shot": measure("few_shot", few, ()),
            "plain": measure("plain", zero, (), 1),  # unsteered zero-shot, first token only: the prefill alone
        },
        reps,
        on_rep=lambda r: log(f"  few-shot rep {r + 1}/{reps}"),
    )
    # [0] of each was the warm-up
    steered, few_shot, plain = results["steered_zero_shot"][1:], results["few_shot"][1:], results["plain"][1:]

    def total(runs: list[list[GenerationResult]], key: str) -> list[float]:
        return [sum(r.timing[key] for r in rep) for rep in runs]

    ttft = paired_ratios(total(steered, "first_token_s"), total(few_shot, "first_token_s"))
    full = paired_ratios(total(steered, "total_s"), total(few_shot, "total_s"))
    n = len(queries)
    last_steered, last_few = steered[-1], few_shot[-1]
    detail = {
        "queries": n,
        "shots": len(shots),
        "prompt_tokens_zero_shot": round(sum(len(p) for p in zero) / n, 1),
        "prompt_tokens_few_shot": round(sum(len(p) for p in few) / n, 1),
        "answer_tokens_steered": round(sum(len(r.token_ids) for r in last_steered) / n, 2),
        "answer_tokens_few_shot": round(sum(len(r.token_ids) for r in last_few) / n, 2),
        "first_token_ms_steered": round(median(total(steered, "first_token_s")) / n * 1000, 2),
        "first_token_ms_few_shot": round(median(total(few_shot, "first_token_s")) / n * 1000, 2),
        "first_token_ms_unsteered_zero_shot": round(median(total(plain, "first_token_s")) / n * 1000, 2),
        "full_answer_ms_steered": round(median(total(steered, "total_s")) / n * 1000, 2),
        "full_answer_ms_few_shot": round(median(total(few_shot, "total_s")) / n * 1000, 2),
        "exact_match_steered": _exact(last_steered, queries),
        "exact_match_few_shot": _exact(last_few, queries),
        "first_token_ratios_per_rep": [round(r, 4) for r in ttft],
        "full_answer_ratios_per_rep": [round(r, 4) for r in full],
        "method": vector.method,
        "strength": strength,
    }
    return IclResult(median(ttft), median(full), detail)


def _exact(results: Sequence[GenerationResult], queries: Sequence[Demonstration]) -> float:
    hits = sum(r.text.strip() == q.output.strip() for r, q in zip(results, queries, strict=True))
    return round(hits / len(queries), 3)


# ------------------------------------------------------------------------------------------- peers


def loop_generate(lm: LoadedModel, ids: Tensor, tokens: int) -> None:
    """The plainest greedy decode with a KV cache: what the peers' hooks are timed in."""
    model = lm.model
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        out = model(input_ids=ids, **lm.arch.cache_argument(cache), use_cache=True, logits_to_keep=1)
        for _ in range(tokens - 1):
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            out = model(input_ids=nxt, **lm.arch.cache_argument(cache), use_cache=True, logits_to_keep=1)


@contextlib.contextmanager
def raw_hooks(lm: LoadedModel, vectors: dict[int, Tensor]) -> Iterator[None]:
    """The floor: one forward hook per layer that adds a prepared vector to the layer's output."""

    def make(delta: Tensor):
        def hook(module, args, output):
            if isinstance(output, tuple):
                return (output[0] + delta, *output[1:])
            return output + delta

        return hook

    handles = [lm.arch.layers[layer].register_forward_hook(make(v)) for layer, v in vectors.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _import_steering_vectors() -> object:
    return importlib.import_module("steering_vectors")


def _import_repeng() -> object:
    import numpy as np

    if not hasattr(np, "float_"):
        # repeng 0.4 names np.float_ in a type annotation, which NumPy 2 removed; the alias changes nothing else.
        np.float_ = np.float64  # type: ignore[attr-defined]
    return importlib.import_module("repeng")


def peer_availability() -> dict[str, str | None]:
    """None where the peer imports, else why not."""
    out: dict[str, str | None] = {}
    for name, load in (("steering_vectors", _import_steering_vectors), ("repeng", _import_repeng)):
        try:
            load()
            out[name] = None
        except Exception as exc:  # any import failure means: skip and say why
            out[name] = f"{type(exc).__name__}: {exc}"[:300]
    return out


@contextlib.contextmanager
def steering_vectors_applied(lm: LoadedModel, vectors: dict[int, Tensor]) -> Iterator[None]:
    sv = _import_steering_vectors()
    vector = sv.SteeringVector(layer_activations=dict(vectors), layer_type="decoder_block")  # type: ignore[attr-defined]
    with vector.apply(lm.model):
        yield


@contextlib.contextmanager
def repeng_applied(lm: LoadedModel, vectors: dict[int, Tensor]) -> Iterator[None]:
    repeng = _import_repeng()
    control = repeng.ControlModel(lm.model, list(vectors))  # type: ignore[attr-defined]  # wraps the layers in place
    try:
        control.set_raw_control(dict(vectors))
        yield
    finally:
        control.reset()
        control.unwrap()


def measure_peers(
    lm: LoadedModel, vectors: dict[int, Tensor], tokens: int, reps: int, log: Callable[[str], None]
) -> tuple[DecodeResult, DecodeResult, dict[str, str | None]]:
    """Per-token decode with one additive vector on `vectors`' layers, at every position.

    Returns (peers in a plain greedy loop vs that loop unsteered, our engine add_all vs our engine unsteered,
    availability of the peer libraries). The same prompt and token count everywhere.
    """
    availability = peer_availability()
    engine = fixed_length_engine(lm)
    prompt_ids = engine.encode(DECODE_PROMPT)
    ids = torch.tensor([prompt_ids], device=lm.device)

    def loop_with(ctx: Callable[[], contextlib.AbstractContextManager[None]]) -> Callable[[int], float]:
        def run(n: int) -> float:
            with ctx():
                return timed(lambda: loop_generate(lm, ids, n))

        return run

    residual = torch.zeros(lm.arch.num_layers, lm.arch.hidden_size)
    for layer, v in vectors.items():
        residual[layer] = v.float().cpu()
    add_all = TaskVector(
        method="bench",
        mode="add_all",
        tensors={"residual": residual},
        layers=sorted(vectors),
        default_strength=1.0,
        fingerprint=lm.fingerprint,
    )
    runs: dict[str, Callable[[], float]] = {
        "loop_unsteered": per_token(loop_with(contextlib.nullcontext), tokens),
        "raw_hook": per_token(loop_with(lambda: raw_hooks(lm, vectors)), tokens),
        "engine_unsteered": per_token(lambda n: engine_run(engine, prompt_ids, (), n), tokens),
        "engine_add_all": per_token(lambda n: engine_run(engine, prompt_ids, (SteeringTerm(add_all, 1.0),), n), tokens),
    }
    if availability["steering_vectors"] is None:
        runs["steering_vectors"] = per_token(loop_with(lambda: steering_vectors_applied(lm, vectors)), tokens)
    if availability["repeng"] is None:
        runs["repeng"] = per_token(loop_with(lambda: repeng_applied(lm, vectors)), tokens)
    samples = interleaved(runs, reps, on_rep=lambda r: log(f"  peers rep {r + 1}/{reps}"))
    loop = DecodeResult({k: v for k, v in samples.items() if not k.startswith("engine")}, "loop_unsteered")
    ours = DecodeResult({k: v for k, v in samples.items() if k.startswith("engine")}, "engine_unsteered")
    return loop, ours, availability


def steering_vectors_attach_ms(lm: LoadedModel, vectors: dict[int, Tensor], reps: int = 5) -> float | None:
    """How long steering-vectors' `apply()` takes to attach its hooks (it looks the layers up every call)."""
    try:
        sv = _import_steering_vectors()
    except Exception:
        return None
    vector = sv.SteeringVector(layer_activations=dict(vectors), layer_type="decoder_block")  # type: ignore[attr-defined]
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        handle = vector.patch_activations(lm.model)
        times.append(time.perf_counter() - started)
        handle.remove()
    return median(times) * 1000
