"""`make bench`: what steering costs on this machine, as ratios measured within one run.

    python -m scripts.bench                       # the default model (SmolLM2-135M), minutes on a CPU
    python -m scripts.bench --quick --model tiny:llama   # a smoke run in seconds

Prints a table (each ratio next to its target, PASS/MISS) and writes bench-results/bench.json (and the
table as bench-results/bench.txt). docs/PERFORMANCE.md explains every figure.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# torch's OpenMP threads spin while another process is busy on the machine; set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

DEFAULT_OUT = Path("bench-results/bench.json")
ICL_TASK = "antonyms"
STRENGTHS = (0.5, 0.75, 1.0, 1.25, 1.5, 0.6, 0.9, 1.1)


@dataclass(frozen=True)
class Settings:
    """How much work each measurement does; --quick shrinks everything to a smoke run."""

    decode_tokens: int
    decode_reps: int
    peer_reps: int
    icl_queries: int
    icl_shots: int
    icl_max_new_tokens: int
    icl_reps: int
    batch_clients: int
    batch_max_new_tokens: int
    batch_reps: int
    overhead_tokens: int
    overhead_reps: int
    register_n: int
    compute_demos: int
    compute_options: dict[str, dict[str, Any]]
    suite_demos: int
    suite_options: dict[str, Any]
    compute_timeout_s: float


FULL = Settings(
    decode_tokens=32,
    decode_reps=11,
    peer_reps=9,
    icl_queries=8,
    icl_shots=10,
    icl_max_new_tokens=16,
    icl_reps=3,
    batch_clients=8,
    batch_max_new_tokens=32,
    batch_reps=3,
    overhead_tokens=16,
    overhead_reps=8,
    register_n=50,
    compute_demos=40,
    compute_options={},  # every method with its default options
    suite_demos=16,
    suite_options={"num_prompts": 8},
    compute_timeout_s=1800.0,
)

QUICK = Settings(
    decode_tokens=4,
    decode_reps=2,
    peer_reps=2,
    icl_queries=2,
    icl_shots=10,
    icl_max_new_tokens=4,
    icl_reps=1,
    batch_clients=8,
    batch_max_new_tokens=4,
    batch_reps=1,
    overhead_tokens=4,
    overhead_reps=2,
    register_n=10,
    compute_demos=12,
    compute_options={
        "task_vector": {"num_prompts": 2},
        "function_vector": {"num_prompts": 2, "num_corrupted": 2, "num_heads": 2},
        "icv": {"num_prompts": 2},
        "contrastive": {"num_prompts": 2},
        "soft_injection": {"num_prompts": 2, "steps": 2, "batch_size": 4, "eval_every": 1, "patience": 1},
        "context_tuning": {"k_shot": 2, "epochs": 1},
    },
    suite_demos=8,
    suite_options={"num_prompts": 2, "layer": 1, "strength": 1.0},
    compute_timeout_s=600.0,
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def methods_present() -> list[str]:
    methods = ["task_vector", "function_vector", "icv", "contrastive"]
    for optional in ("soft_injection", "context_tuning"):  # absent from older checkouts the bench is run against
        if importlib.util.find_spec(f"steering.methods.{optional}") is not None:
            methods.append(optional)
    return methods


def run(model: str, settings: Settings, out: Path, keep_server_log: bool) -> dict[str, Any]:
    import torch

    from scripts import bench_engine, bench_http
    from scripts.bench_common import LoadSampler, Metric, load_average, machine_facts, median, paired_ratios
    from steering.model.loading import load_model
    from steering.steer.inject import SteeringTerm
    from steering.tasks.datasets import load_task, split_task, task_names
    from steering.tasks.templates import DEFAULT_TEMPLATE, render_query

    metrics: list[Metric] = []
    started_wall, started = time.time(), time.perf_counter()
    load_start = load_average()
    with LoadSampler() as sampler, tempfile.TemporaryDirectory(prefix="steer-bench-") as tmp:
        log(f"loading {model} in-process")
        lm = load_model(model)
        log(f"starting a server on {model}")
        server_log = Path(tmp) / "server.log"
        server = bench_http.start_server(model, Path(tmp) / "data", server_log)
        try:
            import httpx

            http = httpx.Client(base_url=server.url, timeout=600.0)
            methods = methods_present()
            items = load_task(ICL_TASK)
            demos, queries = split_task(items, settings.compute_demos + settings.icl_shots, settings.icl_queries)
            compute_demos, shots = demos[: settings.compute_demos], demos[settings.compute_demos :]

            # 1. computing a new vector, per method (default options in the full run)
            log(f"computing vectors over HTTP: {', '.join(methods)} on {len(compute_demos)} demonstrations")
            computed = bench_http.compute_methods(
                http, compute_demos, methods, settings.compute_options, settings.compute_timeout_s, log
            )
            for method, c in computed.items():
                metrics.append(
                    Metric(
                        f"compute.{method}_s",
                        f"compute a new {method} vector",
                        round(c.wall_s, 2),
                        "s",
                        note=f"POST to ready; {len(compute_demos)} demos, "
                        + ("default options" if not settings.compute_options else "quick options"),
                        detail={
                            "server_compute_s": c.compute_s,
                            "layers": c.vector.layers[:8],
                            "options": settings.compute_options.get(method, {}),
                        },
                    )
                )

            # 2. registering a task the server already knows
            log(f"posting a known task {settings.register_n} times")
            body = bench_http.task_body(
                compute_demos, "task_vector", settings.compute_options.get("task_vector", {}), "bench-task_vector"
            )
            known = bench_http.register_known(http, body, settings.register_n)
            metrics.append(
                Metric(
                    "http.register_known_p50_ms",
                    "register an already-known task, p50",
                    round(known["p50_ms"], 2),
                    "ms",
                    "<=",
                    15.0,
                    note=f"POST /v1/tasks x{known['n']}, p90 {known['p90_ms']:.1f} ms",
                    detail=known,
                )
            )

            # 3. batching: 8 clients, 8 tasks, 8 strengths vs the same requests one at a time
            names = [n for n in task_names() if n != ICL_TASK][: settings.batch_clients]
            suite = {n: split_task(load_task(n), settings.suite_demos, 1, seed=0) for n in names}
            log(f"registering {len(names)} tasks (task_vector {settings.suite_options})")
            ids, suite_s = bench_http.register_suite(
                http, {n: d for n, (d, _) in suite.items()}, settings.suite_options, settings.compute_timeout_s
            )
            log(f"  ready in {suite_s:.1f} s")
            bodies = [
                {
                    "prompt": render_query(DEFAULT_TEMPLATE, suite[n][1][0].input),
                    "steering": [{"task": ids[n], "strength": STRENGTHS[i % len(STRENGTHS)]}],
                    "max_new_tokens": settings.batch_max_new_tokens,
                }
                for i, n in enumerate(names)
            ]
            log(f"batching: {len(bodies)} concurrent clients vs sequential")
            batching = bench_http.measure_batching(server.url, bodies, settings.batch_reps, log)
            batching.detail["tasks"] = names
            batching.detail["register_8_tasks_s"] = round(suite_s, 2)
            metrics.append(
                Metric(
                    "http.batching_throughput_ratio",
                    f"{len(bodies)} concurrent clients vs one at a time (tokens/s)",
                    round(batching.ratio, 3),
                    "x",
                    ">=",
                    2.5,
                    note=f"{batching.detail['concurrent_tokens_per_s']} vs "
                    f"{batching.detail['sequential_tokens_per_s']} tok/s",
                    detail=batching.detail,
                )
            )

            # 4. HTTP service overhead vs the library in-process
            tv = computed["task_vector"]
            prompt = render_query(tv.vector.template, queries[0].input)
            log("HTTP vs in-process, one request at a time")
            overhead = bench_http.measure_overhead(
                http,
                lm,
                prompt,
                tv.task_id,
                tv.vector,
                tv.vector.default_strength,
                settings.overhead_tokens,
                settings.overhead_reps,
                log,
            )
            metrics.append(
                Metric(
                    "http.overhead_ratio",
                    "HTTP request vs Engine.generate in-process",
                    round(overhead.ratio, 4),
                    "x",
                    "<=",
                    1.10,
                    note=f"{overhead.detail['http_ms']:.0f} vs {overhead.detail['in_process_ms']:.0f} ms, "
                    f"{settings.overhead_tokens} tokens",
                    detail=overhead.detail,
                )
            )
            http.close()
        finally:
            server.stop()
            if keep_server_log:
                out.parent.mkdir(parents=True, exist_ok=True)
                (out.parent / "server.log").write_text(server.log_tail(1_000_000))

        # 5. steered vs unsteered decode, in-process
        vectors = {method: c.vector for method, c in computed.items()}
        if "soft_injection" in vectors:  # both of its modes, whichever the held-out split chose here
            vectors.update(bench_engine.soft_injection_modes(vectors.pop("soft_injection")))
        plans: dict[str, Sequence[SteeringTerm]] = {
            method: (SteeringTerm(vector, vector.default_strength),) for method, vector in vectors.items()
        }
        log(f"decode per token: {settings.decode_tokens} tokens, {settings.decode_reps} reps, {len(plans)} plans")
        decode = bench_engine.measure_engine_decode(lm, plans, settings.decode_tokens, settings.decode_reps, log)
        metrics.append(
            Metric(
                "decode.unsteered_ms_per_token",
                "unsteered decode per token (engine, batch 1)",
                round(decode.ms("unsteered"), 2),
                "ms",
                detail=decode.detail("unsteered"),
            )
        )
        for method, vector in vectors.items():
            all_layers = len(vector.layers) == lm.arch.num_layers
            label = {"icv": "icv_all_layers"}.get(method, method)
            # A KV prefix is attended to at every step, as the few-shot prompt it was trained from would be.
            threshold = {"icv": 1.10, "context_tuning": 1.25}.get(method, 1.05)
            metrics.append(
                Metric(
                    f"decode.{label}_ratio",
                    f"steered decode {method} ({vector.mode}, {len(vector.layers)} layer(s))",
                    round(decode.ratio(method), 4),
                    "x",
                    "<=",
                    threshold,
                    note=f"{decode.ms(method):.1f} vs {decode.ms('unsteered'):.1f} ms/token"
                    + (" (all layers)" if all_layers else "")
                    + (f", {vector.prefix_tokens} cached prefix tokens" if vector.prefix_tokens else ""),
                    detail={**decode.detail(method), "mode": vector.mode, "layers": len(vector.layers)},
                )
            )

        # 6. steered zero-shot vs k-shot prompting
        log(f"steered zero-shot vs {len(shots)}-shot: {len(queries)} queries")
        icl = bench_engine.measure_icl(
            lm,
            tv.vector,
            tv.vector.default_strength,
            shots,
            queries,
            settings.icl_max_new_tokens,
            settings.icl_reps,
            log,
        )
        d = icl.detail
        metrics.append(
            Metric(
                "icl.first_token_ratio",
                f"steered zero-shot vs {len(shots)}-shot: time to first token",
                round(icl.first_token_ratio, 4),
                "x",
                "<=",
                0.35,
                note=f"{d['first_token_ms_steered']:.0f} vs {d['first_token_ms_few_shot']:.0f} ms; prompt "
                f"{d['prompt_tokens_zero_shot']:.0f} vs {d['prompt_tokens_few_shot']:.0f} tokens",
                detail=d,
            )
        )
        metrics.append(
            Metric(
                "icl.full_answer_ratio",
                f"steered zero-shot vs {len(shots)}-shot: full answer",
                round(icl.full_answer_ratio, 4),
                "x",
                "<=",
                0.35,
                note=f"{d['full_answer_ms_steered']:.0f} vs {d['full_answer_ms_few_shot']:.0f} ms; answer "
                f"{d['answer_tokens_steered']} vs {d['answer_tokens_few_shot']} tokens",
                detail=d,
            )
        )

        # 7. peers: one additive vector on every layer, in the plainest greedy loop
        icv = computed.get("icv")
        source = (
            icv.vector.tensors["residual"] if icv is not None else torch.randn(lm.arch.num_layers, lm.arch.hidden_size)
        )
        scale = 0.05 / source.norm(dim=-1, keepdim=True).clamp_min(1e-6)  # small: only the cost matters
        vectors = {layer: (source[layer] * scale[layer]).to(lm.device, lm.dtype) for layer in range(lm.arch.num_layers)}
        log(f"peers: one vector on {len(vectors)} layers, {settings.peer_reps} reps")
        loop, ours, availability = bench_engine.measure_peers(
            lm, vectors, settings.decode_tokens, settings.peer_reps, log
        )
        apply_ms = (
            bench_engine.steering_vectors_attach_ms(lm, vectors) if availability["steering_vectors"] is None else None
        )
        metrics.append(
            Metric(
                "peers.loop_unsteered_ms_per_token",
                "plain greedy loop (model forward + argmax), unsteered",
                round(loop.ms("loop_unsteered"), 2),
                "ms",
                detail=loop.detail("loop_unsteered"),
            )
        )
        engine_vs_loop = median(paired_ratios(ours.per_token_s["engine_unsteered"], loop.per_token_s["loop_unsteered"]))
        metrics.append(
            Metric(
                "peers.engine_vs_loop_unsteered_ratio",
                "our engine vs the plain loop, both unsteered",
                round(engine_vs_loop, 4),
                "x",
                note=f"{ours.ms('engine_unsteered'):.1f} vs {loop.ms('loop_unsteered'):.1f} ms/token",
            )
        )
        peer_rows = [
            ("raw_hook", "raw forward hook adding the vector (floor)", loop, None),
            ("steering_vectors", "steering-vectors SteeringVector.apply", loop, availability.get("steering_vectors")),
            ("repeng", "repeng ControlModel.set_raw_control", loop, availability.get("repeng")),
            ("engine_add_all", "this engine, add_all vector", ours, None),
        ]
        for name, label, result, missing in peer_rows:
            present = name in result.per_token_s
            notes = {"steering_vectors": f"apply() attaches hooks in {apply_ms:.1f} ms" if apply_ms else ""}
            if name == "repeng" and present:
                notes["repeng"] = "np.float_ aliased to np.float64 for NumPy 2"
            metrics.append(
                Metric(
                    f"peers.{name}_ratio",
                    f"{label}, {len(vectors)} layers",
                    round(result.ratio(name), 4) if present else None,
                    "x",
                    note=notes.get(name, "") or (f"{result.ms(name):.1f} ms/token" if present else ""),
                    detail=result.detail(name) if present else {},
                    skipped=None if present else (missing or "not measured"),
                )
            )
        load_end = load_average()
        load = sampler.summary()

    duration = time.perf_counter() - started
    meta = {
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, "-m", "scripts.bench", *sys.argv[1:]]),
        "model": lm.name,
        "fingerprint": lm.fingerprint,
        "dtype": str(lm.dtype).removeprefix("torch."),
        "device": str(lm.device),
        "quick": settings is QUICK,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started_wall)),
        "duration_s": round(duration, 1),
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in load_end],
        **load,
        "machine": machine_facts(),
        "peers": availability,
        "settings": {k: v for k, v in vars(settings).items()},
    }
    return {"meta": meta, "metrics": {m.key: m.to_json() for m in metrics}, "_rows": metrics}


def render(report: dict[str, Any], width: int = 160) -> tuple[str, Callable[[], None]]:
    """The table as plain text, and a function that prints it (with colour where the terminal has it)."""
    from rich.console import Console
    from rich.table import Table

    meta = report["meta"]
    table = Table(
        title=f"steering bench: {meta['model']} ({meta['dtype']}, {meta['machine']['nproc']} CPUs, "
        f"torch {meta['machine']['torch']}), load {meta['load1_mean']} mean / {meta['load1_max']} max, "
        f"{meta['duration_s']:.0f} s",
        title_justify="left",
    )
    table.add_column("metric", overflow="fold")
    table.add_column("value", justify="right")
    table.add_column("target", justify="right")
    table.add_column("result")
    table.add_column("note", overflow="fold")
    colours = {"PASS": "green", "MISS": "red", "SKIP": "yellow"}
    for m in report["_rows"]:
        value = "-" if m.value is None else f"{m.value:g} {m.unit}".strip()
        status = m.status
        styled = f"[{colours[status]}]{status}[/]" if status in colours else status
        note = m.skipped if m.skipped is not None else m.note
        table.add_row(m.label, value, m.target, styled, note)
    recorder = Console(record=True, width=width, file=open(os.devnull, "w"))  # noqa: SIM115
    recorder.print(table)
    text = recorder.export_text()

    def show() -> None:
        Console(width=width).print(table)

    return text, show


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("STEER_MODEL", "default"), help="default, tiny:llama, ...")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few tokens, few repetitions")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the JSON goes (the table beside it)")
    parser.add_argument("--keep-server-log", action="store_true", help="copy the server's log beside the JSON")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    report = run(args.model, settings, args.out, args.keep_server_log)
    text, show = render(report)
    show()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = report.pop("_rows")
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    args.out.with_suffix(".txt").write_text(text)
    misses = [m.key for m in rows if m.status == "MISS"]
    log(f"wrote {args.out} and {args.out.with_suffix('.txt')}; {len(misses)} target(s) missed: {', '.join(misses)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
