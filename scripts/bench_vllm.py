"""What steering costs on vLLM (`make bench-vllm`): steered / plain vLLM per token at 1, 8 and 32 clients, vLLM
against the transformers engine at 8 and 32 clients, and the time to first token of a zero-shot steered request
(a vector, a KV prefix) against a 10-shot prompt on vLLM, all in one process and one run.

vLLM runs in-process (`VllmEngine` over `AsyncLLM`, V1 model runner) on the default model in float32, compiled
with the steering ops inside (`--eager`: eager with Python hooks); the transformers engine runs as the service
runs it (`ContinuousBackend`); both take up to 32 rows at once. Decode cost per token excludes the prefill:
(time of N new tokens - time of 1) / (N - 1), every client making exactly N tokens (end-of-sequence
ignored). Time to first token is a one-token request's whole time, one client, on the queries of a packaged
task (its own demonstrations as the 10 shots). The measurements are interleaved (A B C A B C ..., the order
rotated every repetition) and each ratio is the median of the per-repetition
ratios, so both sides see the same machine.

Writes `bench-results/vllm.json` (every sample, settings, machine, load) and `bench-results/vllm.txt`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from scripts.bench_common import LoadSampler, interleaved, machine_facts, median, paired_ratios, timed
from scripts.bench_engine import fixed_length_engine
from steering.generation.rows import GenerationRequest
from steering.generation.transformers.continuous import ContinuousBackend
from steering.generation.vllm.engine import VllmEngine
from steering.generation.vllm.model_folder import vllm_model_folder
from steering.generation.vllm.options import VllmOptions
from steering.methods.context_tuning import build_prefix
from steering.model.loading import LoadedModel, default_cache_dir, load_model
from steering.steer.inject import SteeringTerm
from steering.tasks.datasets import load_task
from steering.tasks.templates import DEFAULT_TEMPLATE, few_shot_prompt, render_query
from steering.vectors.modes import expected_shapes, mode_spec
from steering.vectors.task_vector import TaskVector

DEFAULT_OUT = Path("bench-results/vllm.json")
CLIENTS = (1, 8, 32)
COMPARED = (8, 32)  # client counts where vLLM is also measured against the transformers engine
MAX_ROWS = max(CLIENTS)  # rows decoding at once, on both engines
PROMPT_TASK = "antonyms"  # each client's query is one of this task's inputs, a different one per client
SHOTS = 10
FIRST_TOKEN_TASK = "antonyms"


@dataclass(frozen=True)
class Settings:
    tokens: int
    reps: int
    first_token_queries: int


FULL = Settings(tokens=48, reps=5, first_token_queries=8)
QUICK = Settings(tokens=8, reps=1, first_token_queries=2)


class FixedLengthVllm(VllmEngine):
    """Every row makes exactly `max_new_tokens` tokens: no end-of-sequence in vLLM nor in `RowState`."""

    def sampling_params(self, request: GenerationRequest, plan: str | None) -> Any:
        params = super().sampling_params(request, plan)
        params.ignore_eos = True
        return params


class _Ignored:
    def inc(self, amount: float = 1) -> None: ...

    def set(self, value: float) -> None: ...

    def observe(self, amount: float) -> None: ...


class NoMetrics:
    queue_depth = batch_size = generated_tokens = _Ignored()


def synthetic_vector(lm: LoadedModel, mode: str, seed: int) -> TaskVector:
    """A small random vector of a mode: what a step costs does not depend on the values."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    shapes = expected_shapes(lm.arch)
    tensors = {name: torch.randn(shapes[name], generator=gen) * 0.1 for name in mode_spec(mode).tensors}
    method = "soft_injection" if mode_spec(mode).site == "heads" else "contrastive"
    return TaskVector(method, mode, tensors, list(range(lm.arch.num_layers)), 1.0, lm.fingerprint)  # type: ignore[arg-type]


def prefix_vector(lm: LoadedModel) -> TaskVector:
    """A KV prefix of the length context tuning makes: the keys and values of SHOTS demonstrations of the
    first-token task (untrained: what a step costs does not depend on the values)."""
    tensors = build_prefix(lm, DEFAULT_TEMPLATE, load_task(FIRST_TOKEN_TASK)[:SHOTS]).tensors()
    return TaskVector("context_tuning", "kv_prefix", tensors, list(range(lm.arch.num_layers)), 1.0, lm.fingerprint)


def plans(lm: LoadedModel) -> dict[str, tuple[SteeringTerm, ...]]:
    """What each steered row carries: the shapes of the four kinds of vector the service computes."""
    every_layer = tuple(range(lm.arch.num_layers))
    middle = (lm.arch.num_layers // 2,)
    return {
        "plain": (),
        "task_vector": (SteeringTerm(synthetic_vector(lm, "replace_last", 1), 1.0, middle),),
        "icv": (SteeringTerm(synthetic_vector(lm, "add_all_norm", 2), 0.1, every_layer),),
        "soft_injection": (SteeringTerm(synthetic_vector(lm, "head_mix_answer", 3), 1.0, every_layer),),
        "context_tuning": (SteeringTerm(prefix_vector(lm), 1.0),),
    }


def first_token_runs(
    encode: Callable[[str], list[int]],
    vllm: VllmEngine,
    loop: asyncio.AbstractEventLoop,
    terms: tuple[SteeringTerm, ...],
    prefix: tuple[SteeringTerm, ...],
    queries: int,
) -> dict[str, Callable[[], float]]:
    """Seconds to the first token per query, one client: zero-shot steered by a vector and by a KV prefix,
    10-shot prompt, zero-shot plain."""
    demos = load_task(FIRST_TOKEN_TASK)
    shots, asked = demos[:SHOTS], demos[SHOTS : SHOTS + queries]
    zero = [encode(render_query(DEFAULT_TEMPLATE, q.input)) for q in asked]
    few = [encode(few_shot_prompt(DEFAULT_TEMPLATE, shots, q.input)) for q in asked]

    def first_token(prompts: list[list[int]], steering: tuple[SteeringTerm, ...]) -> Callable[[], float]:
        def sample() -> float:
            async def one(ids: list[int]) -> None:
                await vllm.complete(GenerationRequest(list(ids), steering, max_new_tokens=1))

            return sum(timed(lambda ids=ids: loop.run_until_complete(one(ids))) for ids in prompts) / len(prompts)

        return sample

    return {
        "zero-shot steered": first_token(zero, terms),
        "zero-shot KV prefix": first_token(zero, prefix),
        f"{SHOTS}-shot": first_token(few, ()),
        "zero-shot plain": first_token(zero, ()),
    }


def describe(name: str) -> str:
    return {
        "plain": "no steering",
        "task_vector": "replace_last at 1 layer (acts at the last prompt token only)",
        "icv": "add_all_norm at every layer, every token",
        "soft_injection": "head_mix_answer at every layer, every token",
        "context_tuning": f"a KV prefix of {SHOTS} demonstrations' keys and values (placeholders ahead of the prompt)",
    }[name]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("STEER_MODEL", "default"), help="default, tiny:llama, ...")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few tokens, one repetition")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the JSON goes (the table beside it)")
    parser.add_argument("--eager", action="store_true", help="vLLM eager with Python hooks, not compiled")
    parser.add_argument(
        "--clients", type=_client_counts, default=CLIENTS, help="client counts to measure, e.g. 32 or 1,8,32"
    )
    parser.add_argument("--reps", type=int, help="repetitions (default: 5, or 1 with --quick)")
    parser.add_argument(
        "--block-size", type=int, help="vLLM's KV block tokens (default: its own, 128 on CPU, 16 on CUDA)"
    )
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    if args.reps is not None:
        settings = replace(settings, reps=args.reps)
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # vLLM's workers share the cores with this process
    started_wall, started = time.time(), time.perf_counter()
    lm = load_model(args.model, dtype="float32")
    loop = asyncio.new_event_loop()
    engine = fixed_length_engine(lm)
    folder = vllm_model_folder(lm, args.model, default_cache_dir())
    vllm = loop.run_until_complete(
        FixedLengthVllm.start(
            folder,
            lm.tokenizer,
            eos_ids=set(),
            fingerprint=lm.fingerprint,
            options=VllmOptions(
                max_num_seqs=MAX_ROWS,
                max_num_batched_tokens=512,
                kv_cache_bytes=512 << 20,
                enforce_eager=args.eager,
                block_size=args.block_size,
            ),
        )
    )

    async def start_backend() -> ContinuousBackend:
        backend = ContinuousBackend(engine, MAX_ROWS, 4 * MAX_ROWS, NoMetrics())
        backend.start()
        return backend

    backend = loop.run_until_complete(start_backend())
    prompts = [engine.encode(render_query(DEFAULT_TEMPLATE, d.input)) for d in load_task(PROMPT_TASK)[:MAX_ROWS]]
    steering = plans(lm)

    def requests(clients: int, terms: tuple[SteeringTerm, ...], tokens: int) -> list[GenerationRequest]:
        return [GenerationRequest(list(prompts[i]), terms, max_new_tokens=tokens) for i in range(clients)]

    async def on_vllm(batch: list[GenerationRequest]) -> None:
        await asyncio.gather(*(vllm.complete(r) for r in batch))

    async def on_transformers(batch: list[GenerationRequest]) -> None:
        await asyncio.gather(*(backend.result(backend.submit(r)) for r in batch))

    def per_token(run: Callable[[list[GenerationRequest]], Any], clients: int, name: str) -> Callable[[], float]:
        terms = steering[name]

        def sample() -> float:
            one = timed(lambda: loop.run_until_complete(run(requests(clients, terms, 1))))
            many = timed(lambda: loop.run_until_complete(run(requests(clients, terms, settings.tokens))))
            return (many - one) / (settings.tokens - 1)

        return sample

    samples: dict[str, dict[str, list[float]]] = {}
    with LoadSampler() as sampler:
        for clients in args.clients:
            runs = {f"vllm {name}": per_token(on_vllm, clients, name) for name in steering}
            if clients in COMPARED:
                runs |= {f"transformers {name}": per_token(on_transformers, clients, name) for name in steering}
            samples[str(clients)] = interleaved(
                runs, settings.reps, on_rep=lambda rep: print(f"  rep {rep}", flush=True)
            )
            print(f"{clients} client(s) measured", flush=True)
        samples["first token"] = interleaved(
            first_token_runs(
                engine.encode,
                vllm,
                loop,
                steering["task_vector"],
                steering["context_tuning"],
                settings.first_token_queries,
            ),
            settings.reps,
            on_rep=lambda rep: print(f"  rep {rep}", flush=True),
        )
        print("first token measured", flush=True)
    vllm.close()
    loop.run_until_complete(backend.close())

    rows = figures(samples, steering)
    form = "eager" if args.eager else "compiled"
    text = table(rows, lm, settings, time.perf_counter() - started, form)
    print(text)
    report = {
        "meta": {
            "command": " ".join(
                shlex.quote(a) for a in [Path(sys.executable).name, "-m", "scripts.bench_vllm", *sys.argv[1:]]
            ),
            "model": lm.name,
            "fingerprint": lm.fingerprint,
            "dtype": "float32",
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started_wall)),
            "duration_s": round(time.perf_counter() - started, 1),
            "settings": vars(settings)
            | {
                "clients": args.clients,
                "vllm_max_num_seqs": MAX_ROWS,
                "transformers_max_batch": MAX_ROWS,
                "vllm_form": form,
                "vllm_block_size": args.block_size,
            },
            "machine": machine_facts() | {"vllm": _vllm_version()},
            **sampler.summary(),
        },
        "figures": rows,
        "per_token_s": samples,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".txt").write_text(text + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.txt')}")
    return 0


def figures(samples: dict[str, dict[str, list[float]]], steering: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-token times (median ms) and the ratios the run is for (median of per-repetition ratios)."""
    rows: list[dict[str, Any]] = []
    for clients, runs in samples.items():
        if clients == "first token":
            rows += first_token_figures(runs)
            continue
        for name in steering:
            vllm = runs[f"vllm {name}"]
            plain = name == "plain"
            rows.append(
                {
                    "figure": f"vLLM {name}{'' if plain else ' / vLLM plain'} per token, {clients} client(s)",
                    "ratio": None if plain else round(median(paired_ratios(vllm, runs["vllm plain"])), 3),
                    "ms_per_token": round(1000 * median(vllm), 1),
                    "tok_per_s": round(int(clients) / median(vllm), 1),
                    "what": describe(name),
                }
            )
            if f"transformers {name}" in runs:
                ours = runs[f"transformers {name}"]
                rows.append(
                    {
                        "figure": f"vLLM {name} / transformers {name} per token, {clients} clients",
                        "ratio": round(median(paired_ratios(vllm, ours)), 3),
                        "ms_per_token": round(1000 * median(ours), 1),
                        "tok_per_s": round(int(clients) / median(ours), 1),
                        "what": "ms and tok/s here are the transformers engine's",
                    }
                )
    return rows


def first_token_figures(runs: dict[str, list[float]]) -> list[dict[str, Any]]:
    steered, few = runs["zero-shot steered"], runs[f"{SHOTS}-shot"]
    return [
        {
            "figure": f"first token: zero-shot steered / {SHOTS}-shot prompt, 1 client",
            "ratio": round(median(paired_ratios(steered, few)), 3),
            "ms_per_token": round(1000 * median(steered), 1),
            "tok_per_s": round(1 / median(steered), 1),
            "what": f"task_vector (replace_last), {FIRST_TOKEN_TASK} queries; ms here: the steered request's",
        },
        {
            "figure": f"first token: zero-shot with a KV prefix / {SHOTS}-shot prompt, 1 client",
            "ratio": round(median(paired_ratios(runs["zero-shot KV prefix"], few)), 3),
            "ms_per_token": round(1000 * median(runs["zero-shot KV prefix"]), 1),
            "tok_per_s": round(1 / median(runs["zero-shot KV prefix"]), 1),
            "what": f"context tuning's {SHOTS}-shot prefix; its placeholders' blocks cached after the first request",
        },
        {
            "figure": f"first token: {SHOTS}-shot prompt, 1 client",
            "ratio": None,
            "ms_per_token": round(1000 * median(few), 1),
            "tok_per_s": round(1 / median(few), 1),
            "what": f"{SHOTS} demonstrations of {FIRST_TOKEN_TASK} before each query",
        },
        {
            "figure": "first token: zero-shot steered / zero-shot plain, 1 client",
            "ratio": round(median(paired_ratios(steered, runs["zero-shot plain"])), 3),
            "ms_per_token": round(1000 * median(runs["zero-shot plain"]), 1),
            "tok_per_s": round(1 / median(runs["zero-shot plain"]), 1),
            "what": "what steering adds to the prefill; ms here: the plain request's",
        },
    ]


def table(rows: list[dict[str, Any]], lm: LoadedModel, settings: Settings, duration_s: float, form: str) -> str:
    header = (
        f"vLLM steering bench ({form}): {lm.name} (float32, {os.cpu_count()} CPUs), "
        f"{settings.tokens} tokens per client, {settings.reps} repetitions, {duration_s:.0f} s"
    )
    width = max(len(r["figure"]) for r in rows)
    lines = [header, f"{'figure':<{width}}  ratio   ms/token  tok/s  what"]
    for r in rows:
        lines.append(
            f"{r['figure']:<{width}}  {'' if r['ratio'] is None else format(r['ratio'], '.3f'):>5}  "
            f"{r['ms_per_token']:8.1f}  {r['tok_per_s']:5.1f}  {r['what']}"
        )
    return "\n".join(lines)


def _client_counts(text: str) -> tuple[int, ...]:
    counts = tuple(int(c) for c in text.split(","))
    if not all(1 <= c <= MAX_ROWS for c in counts):
        raise argparse.ArgumentTypeError(f"client counts go from 1 to {MAX_ROWS}")
    return counts


def _vllm_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for name in ("vllm-cpu", "vllm"):
        try:
            return f"{name} {version(name)}"
        except PackageNotFoundError:
            continue
    return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
