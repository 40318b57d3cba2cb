"""The transformers engine's invariants and costs on this machine's device, in the dtype it serves in.

    python -m scripts.engine_checks --model default                       # the packaged model (CUDA: bfloat16)
    python -m scripts.engine_checks --model default --dtype float32       # the same in float32
    python -m scripts.engine_checks --shape smollm2-1.7b                  # random weights, a 1.7B model's layers
    python -m scripts.engine_checks --model tiny:llama --quick            # a smoke run in seconds

The unit tests hold the invariants (docs/ARCHITECTURE.md) exactly on tiny models in float32 on a CPU. This
counts how many rows of a real model hold them on the device and dtype people serve with, where kernels may
pick other reduction orders for other batch shapes: strength 0 against the plain model, a mixed batch against
each row alone (and its unsteered rows apart, which part only through rounding), rows joining a running batch
one step apart against each row alone. A row that differs reports the first token where it parts. Then what
steering costs there: decode time per token steered and plain (batch 1), tokens per second of a batch of mixed
rows against the same batch plain, what each vector took to compute, and what building a row's KV-prefix cache
takes. Writes JSON (and prints it).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from scripts.bench_common import machine_facts, median, timed
from scripts.bench_engine import fixed_length_engine, measure_engine_decode
from steering.generation.rows import GenerationRequest
from steering.generation.transformers.engine import Engine
from steering.generation.transformers.scheduler import Scheduler
from steering.methods import compute_vector
from steering.model.loading import LoadedModel, load_model, pick_device, pick_dtype, wrap_model
from steering.model.tiny import build_tiny_tokenizer
from steering.steer.inject import SteeringTerm
from steering.steer.prefix import prefixed_cache
from steering.tasks.datasets import load_task, split_task
from steering.tasks.templates import DEFAULT_TEMPLATE, render_query
from steering.vectors.task_vector import TaskVector

# Random weights in a real model's shape (no weights to carry): its decoder layers at full size, with the tiny
# byte-level tokenizer's vocabulary, so the layers, not the embedding, carry the cost.
SHAPES: dict[str, dict[str, Any]] = {
    "smollm2-1.7b": {
        "model_type": "llama",
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 24,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "max_position_embeddings": 8192,
        "rope_theta": 130000.0,
        "tie_word_embeddings": True,
    },
}
METHODS = ("task_vector", "function_vector", "icv", "soft_injection", "context_tuning")
QUICK_OPTIONS: dict[str, dict[str, Any]] = {
    "task_vector": {"num_prompts": 6, "k_shot": 3},
    "function_vector": {"num_prompts": 6, "k_shot": 3},
    "icv": {"num_prompts": 6, "k_shot": 3},
    "soft_injection": {"num_prompts": 6, "k_shot": 3, "steps": 4, "eval_every": 2, "batch_size": 8},
    "context_tuning": {"k_shot": 3, "epochs": 2},
}
TASKS = ("antonyms", "country_capital", "english_french", "present_past")
STRENGTHS = (0.0, 1.0, 1.5)


def random_shaped_model(shape: str, device: torch.device, dtype: torch.dtype, **overrides: Any) -> LoadedModel:
    """Random weights in `SHAPES[shape]` (and `overrides` of its config), seeded."""
    tokenizer = build_tiny_tokenizer()
    settings = {**SHAPES[shape], **overrides}
    config = AutoConfig.for_model(settings.pop("model_type"), vocab_size=len(tokenizer), **settings)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return wrap_model(model, tokenizer, f"random:{shape}")


def compute_vectors(lm: LoadedModel, methods: Sequence[str], quick: bool) -> tuple[dict[str, TaskVector], dict]:
    demos, _ = split_task(load_task(TASKS[0]), 40, 10, seed=0)
    vectors, seconds = {}, {}
    for method in methods:
        start = time.perf_counter()
        vectors[method] = compute_vector(lm, demos, method, options=QUICK_OPTIONS[method] if quick else None)
        seconds[method] = round(time.perf_counter() - start, 2)
        print(f"computed {method} in {seconds[method]} s", flush=True)
    return vectors, seconds


def check_rows(lm: LoadedModel, vectors: dict[str, TaskVector], queries: int, tokens: int) -> dict[str, Any]:
    """Each invariant as rows that hold it exactly, and where the others part."""
    engine = Engine(lm)
    prompts = [render_query(DEFAULT_TEMPLATE, d.input) for t in TASKS for d in split_task(load_task(t), 0, queries)[1]]
    plans = [()] + [(SteeringTerm(v, s),) for v in vectors.values() for s in STRENGTHS]
    requests = [GenerationRequest(engine.encode(p), plan, max_new_tokens=tokens) for p in prompts for plan in plans]
    alone = [engine.generate([r])[0].token_ids for r in requests]
    batched = [r.token_ids for r in engine.generate(requests)]
    joined = _joining_one_step_apart(engine, requests)
    plain = {p: alone[i * len(plans)] for i, p in enumerate(prompts)}
    zero = [(alone[i], plain[prompts[i // len(plans)]]) for i, r in enumerate(requests) if _zero(r)]
    unsteered = [i for i, r in enumerate(requests) if not r.steering]  # whether plain rows part too: rounding
    return {
        "rows": len(requests),
        "strength_zero_equals_plain": _agreement(zero),
        "mixed_batch_equals_alone": _agreement(list(zip(batched, alone, strict=True))),
        "joining_rows_equal_alone": _agreement(list(zip(joined, alone, strict=True))),
        "unsteered_rows_of_the_mixed_batch_equal_alone": _agreement([(batched[i], alone[i]) for i in unsteered]),
    }


def _zero(request: GenerationRequest) -> bool:
    return bool(request.steering) and all(t.strength == 0.0 for t in request.steering)


def _joining_one_step_apart(engine: Engine, requests: Sequence[GenerationRequest]) -> list[list[int]]:
    scheduler = Scheduler(engine)
    results: dict[int, list[int]] = {}
    pending = list(enumerate(requests))
    with engine.lm.lock.first():
        while pending or len(scheduler):
            if pending:
                scheduler.add(*pending.pop(0))
            for update in scheduler.step():
                if update.result is not None:
                    results[int(update.key)] = update.result.token_ids
    return [results[i] for i in range(len(requests))]


def _agreement(pairs: list[tuple[list[int], list[int]]]) -> dict[str, Any]:
    parted = [
        next((i for i, (a, b) in enumerate(zip(x, y, strict=False)) if a != b), min(len(x), len(y)))
        for x, y in pairs
        if x != y
    ]
    return {"rows": len(pairs), "equal": len(pairs) - len(parted), "first_differing_token": sorted(parted)}


def measure_costs(lm: LoadedModel, vectors: dict[str, TaskVector], tokens: int, reps: int, rows: int) -> dict:
    plans = {name: (SteeringTerm(v, 1.0),) for name, v in vectors.items()}
    decode = measure_engine_decode(lm, plans, tokens, reps, log=lambda line: print(line, flush=True))
    per_token_ms = {name: round(1000 * median(s), 3) for name, s in decode.per_token_s.items()}
    engine = fixed_length_engine(lm)
    prompt_ids = engine.encode(render_query(DEFAULT_TEMPLATE, "a long way from home"))
    mixed = [p for p in plans.values() if not any(t.vector.mode == "kv_prefix" for t in p)] or [()]
    batches = {
        "plain": [GenerationRequest(prompt_ids, (), max_new_tokens=tokens) for _ in range(rows)],
        "mixed": [GenerationRequest(prompt_ids, mixed[i % len(mixed)], max_new_tokens=tokens) for i in range(rows)],
    }
    throughput = {
        name: round(rows * tokens / median([timed(lambda b=batch: engine.generate(b)) for _ in range(reps)]), 1)
        for name, batch in batches.items()
    }
    costs: dict[str, Any] = {
        "decode_ms_per_token_batch1": per_token_ms,
        "steered_over_plain_batch1": {n: round(ms / per_token_ms["unsteered"], 3) for n, ms in per_token_ms.items()},
        f"tokens_per_s_batch{rows}": throughput,
        "mixed_over_plain_throughput": round(throughput["mixed"] / throughput["plain"], 3),
    }
    if "context_tuning" in vectors:
        term = SteeringTerm(vectors["context_tuning"], 1.0)
        config, device, dtype = lm.model.config, lm.device, lm.dtype
        build = [timed(lambda: prefixed_cache(term, config, device, dtype)) for _ in range(20)]
        costs["prefix_cache_build_ms"] = round(1000 * median(build), 3)
        costs["prefix_tokens"] = vectors["context_tuning"].prefix_tokens
    return costs


def machine(lm: LoadedModel) -> dict[str, Any]:
    device = lm.device
    return {
        **machine_facts(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
        "dtype": str(lm.dtype).removeprefix("torch."),
        "model": lm.name,
        "parameters_m": round(sum(p.numel() for p in lm.model.parameters()) / 1e6, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", default="default", help="default, a packaged name, a .gguf file, tiny:llama")
    source.add_argument("--shape", choices=sorted(SHAPES), help="random weights in this model's shape")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", help="auto: bfloat16 on CUDA, float32 on a CPU")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--quick", action="store_true", help="a smoke run: short computations, few rows and tokens")
    parser.add_argument("--quick-vectors", action="store_true", help="short vector computations (as --quick)")
    parser.add_argument("--queries", type=int, help="test inputs per task (default 5, 2 with --quick)")
    parser.add_argument("--tokens", type=int, help="greedy tokens per row (default 16, 8 with --quick)")
    parser.add_argument("--reps", type=int, help="timed repetitions (default 5, 2 with --quick)")
    parser.add_argument("--rows", type=int, help="rows of the throughput batch (default 32, 4 with --quick)")
    parser.add_argument("--out", type=Path, default=Path("bench-results/engine_checks.json"))
    args = parser.parse_args(argv)
    quick = args.quick
    queries, tokens = args.queries or (2 if quick else 5), args.tokens or (8 if quick else 16)
    reps, rows = args.reps or (2 if quick else 5), args.rows or (4 if quick else 32)
    if args.shape:
        device = pick_device(args.device)
        lm = random_shaped_model(args.shape, device, pick_dtype(args.dtype, device))
    else:
        lm = load_model(args.model, device=args.device, dtype=args.dtype)
    report: dict[str, Any] = {"machine": machine(lm)}
    print(json.dumps(report["machine"]), flush=True)
    short = quick or args.quick_vectors or bool(args.shape)
    vectors, report["compute_s"] = compute_vectors(lm, args.methods.split(","), short)
    report["invariants"] = check_rows(lm, vectors, queries, tokens)
    _write(args.out, report)  # kept if the costs below run past a time limit
    print(json.dumps(report["invariants"]), flush=True)
    report["costs"] = measure_costs(lm, vectors, tokens=2 * tokens, reps=reps, rows=rows)
    _write(args.out, report)
    print(json.dumps(report, indent=2))
    return 0


def _write(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
