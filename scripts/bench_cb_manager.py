"""Why the service schedules on DynamicCache itself: transformers' continuous-batching manager against
`steering.generation.transformers.scheduler` (and the static engine) on the same prompts, unsteered, greedy,
interleaved.

    python -m scripts.bench_cb_manager                  # default model, ~2 minutes on a 2-core CPU
    python -m scripts.bench_cb_manager --model tiny:llama --reps 1
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from transformers import GenerationConfig

from steering.generation.rows import GenerationRequest
from steering.generation.transformers.engine import Engine
from steering.generation.transformers.scheduler import Scheduler
from steering.model.loading import LoadedModel, load_model

WORDS = ["hot", "big", "fast", "early", "strong", "rich", "wet", "loud"]


def cb_manager(lm: LoadedModel, prompts: list[list[int]], tokens: int) -> tuple[float, list[list[int]]]:
    config = GenerationConfig(max_new_tokens=tokens, do_sample=False, eos_token_id=-1, pad_token_id=0)
    started = time.perf_counter()
    out = lm.model.generate_batch(prompts, generation_config=config, max_new_tokens=tokens, warmup=False)
    elapsed = time.perf_counter() - started
    return elapsed, [list(o.generated_tokens) for o in out.values()]


def scheduler(engine: Engine, prompts: list[list[int]], tokens: int) -> tuple[float, list[list[int]]]:
    run = Scheduler(engine)
    for key, prompt in enumerate(prompts):
        run.add(key, GenerationRequest(prompt, max_new_tokens=tokens))
    out: dict[int, list[int]] = {}
    started = time.perf_counter()
    while len(run):
        with engine.lm.lock.first():
            out.update({u.key: u.result.token_ids for u in run.step() if u.result is not None})
    return time.perf_counter() - started, [out[k] for k in range(len(prompts))]


def static(engine: Engine, prompts: list[list[int]], tokens: int) -> tuple[float, list[list[int]]]:
    started = time.perf_counter()
    results = engine.generate([GenerationRequest(p, max_new_tokens=tokens) for p in prompts])
    return time.perf_counter() - started, [r.token_ids for r in results]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    lm = load_model(args.model)
    engine = Engine(lm)
    engine.eos_ids = set()  # every row makes exactly --tokens tokens, as the manager does with eos_token_id=-1
    prompts = [engine.encode(f"Q: {WORDS[i % len(WORDS)]}\nA:") for i in range(args.rows)]
    runs = {
        "transformers CB manager": cb_manager,
        "steering.generation.transformers.scheduler": scheduler,
        "static Engine.generate": static,
    }
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    tokens: dict[str, list[list[int]]] = {}
    for rep in range(args.reps):
        names = list(runs)
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            target = lm if name.startswith("transformers") else engine
            elapsed, tokens[name] = runs[name](target, prompts, args.tokens)  # type: ignore[operator]
            seconds[name].append(elapsed)
    total = args.rows * args.tokens
    print(f"{args.rows} prompts x {args.tokens} tokens, {args.reps} interleaved repetitions, model {lm.name}")
    for name, values in seconds.items():
        median = statistics.median(values)
        same = tokens[name] == tokens["static Engine.generate"]
        print(f"{name:26s} median {median:6.2f} s  {total / median:6.1f} tok/s  same tokens as static: {same}")


if __name__ == "__main__":
    main()
