"""`make bench-load`: the service under load, continuous batching against static batches, in one run.

    python -m scripts.bench_load                                  # default model, about 10 minutes on 2 CPUs
    python -m scripts.bench_load --quick --model tiny:llama       # smoke run, well under a minute

Two servers on the same store: `continuous` (STEER_SCHEDULER=continuous, computes vectors) and `static`
(STEER_SCHEDULER=static, STEER_ROLE=api). Phases, each run on both servers with the order alternating:

- idle: short steered requests one at a time (the baseline of the ratios below);
- long load: the same short requests while three clients keep asking for 128-token answers, in rounds
  that alternate with idle probes;
- open loop: a mixed trace (scripts/bench_load_trace.py) at several Poisson rates;
- saturation: 16 closed-loop clients streaming the same mix, tokens produced per second;
- training (continuous only): short requests while a soft-injection task computes on the same server;
- decode: per-token cost of steered vs plain decoding in the scheduler, in process;
- reference: plain transformers `generate`, unsteered, one request at a time, on the middle rate's trace.

Writes bench-results/load/load.json (every outcome), load.txt (the table) and load_*.png (the plots).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import httpx

from scripts.bench_common import LoadSampler, Metric, machine_facts, median, percentile
from scripts.bench_http import start_server, wait_ready
from scripts.bench_load_client import Outcome, closed_loop, probes, run_trace, send, with_background
from scripts.bench_load_plots import plot_load
from scripts.bench_load_reference import run_reference
from scripts.bench_load_trace import Task, long_request, make_trace, short_request
from scripts.server_process import ServerProcess

DEFAULT_OUT = Path("bench-results/load/load.json")
TASKS = ("antonyms", "present_past", "country_capital")
SCHEDULERS = ("continuous", "static")
PHASES = ("idle", "long_load", "open_loop", "saturation", "training", "decode", "reference")


@dataclass(frozen=True)
class Plan:
    rates: tuple[float, ...]
    duration_s: float
    idle_probes: int
    probe_s: float
    background_clients: int
    background_tokens: int
    task_demos: int
    task_options: dict[str, Any]
    soft_options: dict[str, Any]
    soft_timeout_s: float
    decode_tokens: int
    decode_reps: int
    reference_rate: int  # index into `rates`
    saturation_clients: int
    saturation_s: float
    long_load_rounds: int


FULL = Plan(
    rates=(0.15, 0.4, 1.0),
    duration_s=30.0,
    idle_probes=12,
    probe_s=30.0,
    background_clients=3,
    background_tokens=128,
    task_demos=16,
    task_options={"num_prompts": 8},
    soft_options={},
    soft_timeout_s=180.0,
    decode_tokens=24,
    decode_reps=5,
    reference_rate=1,
    saturation_clients=16,
    saturation_s=45.0,
    long_load_rounds=3,
)
QUICK = Plan(
    rates=(2.0, 8.0),
    duration_s=2.0,
    idle_probes=4,
    probe_s=2.0,
    background_clients=2,
    background_tokens=32,
    task_demos=8,
    task_options={"num_prompts": 4, "k_shot": 3},
    soft_options={"steps": 400, "num_prompts": 4, "k_shot": 3, "eval_every": 5, "batch_size": 8, "patience": 100},
    soft_timeout_s=60.0,
    decode_tokens=8,
    decode_reps=2,
    reference_rate=0,
    saturation_clients=4,
    saturation_s=2.0,
    long_load_rounds=1,
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def stats(outcomes: Sequence[Outcome], makespan_s: float) -> dict[str, Any]:
    good = [o for o in outcomes if o.status == 200]
    latency = [o.latency_s for o in good]
    ttft = [o.ttft_s for o in good if o.ttft_s is not None]
    short = [o.latency_s for o in good if o.kind == "short" and o.steered]
    tokens = sum(o.tokens for o in good)
    return {
        "requests": len(outcomes),
        "failed": len(outcomes) - len(good),
        "tokens": tokens,
        "makespan_s": round(makespan_s, 2),
        "throughput_tok_s": round(tokens / makespan_s, 2) if makespan_s > 0 else None,
        "latency_p50_s": round(median(latency), 3) if latency else None,
        "latency_p99_s": round(percentile(latency, 0.99), 3) if latency else None,
        "ttft_p50_s": round(median(ttft), 3) if ttft else None,
        "ttft_p99_s": round(percentile(ttft, 0.99), 3) if ttft else None,
        "short_steered_p50_s": round(median(short), 3) if short else None,
    }


# -- set-up -------------------------------------------------------------------------------------------


def start_servers(model: str, workdir: Path) -> dict[str, ServerProcess]:
    envs = {
        "continuous": {"STEER_SCHEDULER": "continuous"},
        "static": {"STEER_SCHEDULER": "static", "STEER_ROLE": "api"},  # computes nothing: training stays on one
    }
    with ThreadPoolExecutor(2) as pool:
        futures = {
            name: pool.submit(start_server, model, workdir / "data", workdir / f"{name}.log", 300.0, env)
            for name, env in envs.items()
        }
        return {name: future.result() for name, future in futures.items()}


def register_tasks(url: str, plan: Plan) -> tuple[list[Task], list[str], str]:
    """Task vectors for the workload, their held-out words, and an ICV task (the decode figure)."""
    from steering.tasks.datasets import load_task, split_task

    tasks, words = [], []
    with httpx.Client(base_url=url, timeout=120) as http:
        for name in TASKS:
            demos, test = split_task(load_task(name), plan.task_demos, 12, seed=0)
            body = {
                "demonstrations": [d.model_dump() for d in demos],
                "method": "task_vector",
                "name": f"load-{name}",
                "options": plan.task_options,
            }
            task_id = http.post("/v1/tasks", json=body).raise_for_status().json()["id"]
            wait_ready(http, task_id, 600)
            tasks.append(Task(task_id, name, demos))
            words += [d.input for d in test]
        demos, _ = split_task(load_task("antonyms"), plan.task_demos, 0, seed=0)
        body = {"demonstrations": [d.model_dump() for d in demos], "method": "icv", "options": plan.task_options}
        icv = http.post("/v1/tasks", json=body).raise_for_status().json()["id"]
        wait_ready(http, icv, 600)
    return tasks, words, icv


# -- phases -------------------------------------------------------------------------------------------


def short_body(tasks: list[Task], words: list[str]) -> Callable[[int], dict[str, Any]]:
    """The probe: always the same steered query and exactly 4 tokens (no stop rule), so latencies compare."""
    body = {**short_request(tasks[0], words[0]), "stop": []}
    return lambda n: body


def idle_phase(servers: dict[str, ServerProcess], plan: Plan, body) -> dict[str, list[float]]:
    """Short steered requests one at a time, the servers taking turns (half the probes each turn)."""
    out: dict[str, list[float]] = {name: [] for name in servers}
    half = max(1, plan.idle_probes // 2)
    for turn in range(2):
        for name in SCHEDULERS[turn % 2 :] + SCHEDULERS[: turn % 2]:
            out[name] += asyncio.run(probes(servers[name].url, body, count=half, gap_s=0.1))
    return out


def long_load_phase(servers: dict[str, ServerProcess], plan: Plan, body) -> dict[str, dict[str, Any]]:
    """Probes beside long answers, in rounds that alternate with idle probes on the same server (the ratio's
    two sides see the same machine). The static server gets one round: each of its probes takes seconds."""
    out = {}
    background = long_request("a long winter", plan.background_tokens)
    for name in SCHEDULERS:
        url = servers[name].url
        rounds = plan.long_load_rounds if name == "continuous" else 1
        idle: list[float] = []
        loaded: list[float] = []
        done = 0
        for _ in range(rounds):
            idle += asyncio.run(probes(url, body, count=max(1, plan.idle_probes // rounds), gap_s=0.25))
            work = probes(url, body, seconds=plan.probe_s / rounds, gap_s=0.25)
            latencies, answered = asyncio.run(with_background(url, background, plan.background_clients, work))
            loaded += latencies
            done += answered
        out[name] = {"latencies": loaded, "idle": idle, "long_answers": done}
        log(f"long load, {name}: short p50 {median(loaded):.3f} s ({len(loaded)}) vs {median(idle):.3f} s idle")
    return out


def open_loop_phase(servers: dict[str, ServerProcess], plan: Plan, tasks: list[Task], words: list[str]) -> list[dict]:
    phases = []
    for i, rate in enumerate(plan.rates):
        trace = make_trace(rate, plan.duration_s, tasks, words, seed=17)
        for name in SCHEDULERS[i % 2 :] + SCHEDULERS[: i % 2]:
            outcomes, makespan = asyncio.run(run_trace(servers[name].url, trace))
            summary = stats(outcomes, makespan)
            phases.append({"scheduler": name, "rate": rate, **summary, "outcomes": [o.to_json() for o in outcomes]})
            log(
                f"rate {rate}/s, {name}: {summary['requests']} requests, {summary['throughput_tok_s']} tok/s, "
                f"p50 {summary['latency_p50_s']} s, p99 {summary['latency_p99_s']} s, failed {summary['failed']}"
            )
    return phases


def saturation_phase(servers: dict[str, ServerProcess], plan: Plan, tasks: list[Task], words: list[str]) -> dict:
    bodies = [r.body for r in make_trace(1.0, 400.0, tasks, words, seed=23)]
    out = {}
    for name in SCHEDULERS:
        pieces, answered = asyncio.run(
            closed_loop(servers[name].url, bodies, plan.saturation_clients, plan.saturation_s)
        )
        out[name] = {"tokens": pieces, "answered": answered, "tok_s": pieces / plan.saturation_s}
        log(f"saturation, {name}: {pieces / plan.saturation_s:.1f} tok/s, {answered} answers")
    return out


def training_phase(url: str, plan: Plan, body) -> dict[str, Any]:
    """Short requests while a soft-injection task computes on the same server, idle ones just before."""
    from steering.tasks.datasets import load_task, split_task

    idle = asyncio.run(probes(url, body, count=plan.idle_probes, gap_s=0.25))
    demos, _ = split_task(load_task("antonyms"), 40, 0, seed=0)
    options = {**plan.soft_options, "seed": int(time.time()) % 100_000}  # a new task every run
    post = {"demonstrations": [d.model_dump() for d in demos], "method": "soft_injection", "options": options}
    state: dict[str, Any] = {"status": "pending", "stage": None, "done": False}

    async def watch(task_id: str) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            while not state["done"]:
                info = (await http.get(f"/v1/tasks/{task_id}")).json()
                state["status"], state["stage"] = info["status"], (info.get("progress") or {}).get("stage")
                state["done"] = info["status"] in ("ready", "failed")
                state["info"] = info
                await asyncio.sleep(0.3)

    async def probe_while_computing(task_id: str) -> list[tuple[float, str | None]]:
        watcher = asyncio.ensure_future(watch(task_id))
        samples: list[tuple[float, str | None]] = []
        deadline = time.monotonic() + plan.soft_timeout_s
        async with httpx.AsyncClient(base_url=url, timeout=600) as client:
            n = 0
            while not state["done"] and time.monotonic() < deadline:
                stage = state["stage"] if state["status"] == "running" else state["status"]
                outcome = await send(client, body(n), time.perf_counter())
                samples.append((outcome.latency_s, stage))
                n += 1
                await asyncio.sleep(0.25)
        state["done"] = True
        await watcher
        return samples

    started = time.perf_counter()
    task_id = httpx.post(f"{url}/v1/tasks", json=post, timeout=60).raise_for_status().json()["id"]
    samples = asyncio.run(probe_while_computing(task_id))
    wall = time.perf_counter() - started
    info = state.get("info", {})
    training = [lat for lat, stage in samples if stage == "training"]
    computing = [lat for lat, stage in samples if stage not in ("pending", None)]
    log(f"training: idle p50 {median(idle):.3f} s, during training p50 {median(training):.3f} s ({len(training)})")
    return {
        "idle": idle,
        "during_training": training,
        "during_computation": computing,
        "samples": samples,
        "status": info.get("status"),
        "compute_wall_s": round(wall, 2),
        "compute_seconds": (info.get("metrics") or {}).get("compute_seconds"),
    }


def decode_phase(lm, icv_vector, tv_vector, plan: Plan) -> dict[str, Any]:
    """Per-token decode cost in the scheduler: (time of N+1 tokens - time of 1 token) / N, interleaved."""
    from steering.generation.rows import GenerationRequest
    from steering.generation.transformers.engine import Engine
    from steering.generation.transformers.scheduler import Scheduler
    from steering.steer.inject import SteeringTerm

    engine = Engine(lm)
    engine.eos_ids = set()  # every row makes exactly its tokens
    prompt = engine.encode("Q: bright\nA:")
    plans = {
        "plain": (),
        "task_vector": (SteeringTerm(tv_vector, tv_vector.default_strength),),
        "icv": (SteeringTerm(icv_vector, icv_vector.default_strength),),
    }

    def run(terms, tokens: int, rows: int) -> float:
        scheduler = Scheduler(engine, priority_new_tokens=0)
        for key in range(rows):
            scheduler.add(key, GenerationRequest(prompt, terms, max_new_tokens=tokens))
        started = time.perf_counter()
        while len(scheduler):
            with lm.lock.first():
                scheduler.step()
        return time.perf_counter() - started

    out: dict[str, Any] = {}
    for rows in (1, 4):
        per_token: dict[str, list[float]] = {name: [] for name in plans}
        for rep in range(plan.decode_reps):
            names = list(plans)
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                long_run = run(plans[name], plan.decode_tokens + 1, rows)
                per_token[name].append((long_run - run(plans[name], 1, rows)) / plan.decode_tokens)
        for name in ("task_vector", "icv"):
            ratios = [s / p for s, p in zip(per_token[name], per_token["plain"], strict=True)]
            out[f"{name}_rows{rows}"] = {"ratio": median(ratios), "ratios": ratios, "ms": median(per_token[name]) * 1e3}
        out[f"plain_rows{rows}_ms"] = median(per_token["plain"]) * 1e3
    return out


# -- report -------------------------------------------------------------------------------------------


def metrics_of(report: dict[str, Any]) -> list[Metric]:
    idle, long_load, phases = report.get("idle", {}), report.get("long_load", {}), report.get("open_loop", [])
    out = []
    for name in idle:
        out.append(Metric(f"idle.{name}_p50_s", f"short steered request alone, {name}", median(idle[name]), "s"))
    for name in long_load:
        ratio = median(long_load[name]["latencies"]) / median(long_load[name]["idle"])
        target = {"op": "<=", "threshold": 1.3} if name == "continuous" else {}
        note = f"p50 {median(long_load[name]['latencies']):.2f} s vs {median(long_load[name]['idle']):.2f} s idle"
        out.append(
            Metric(
                f"long_load.{name}_ratio",
                f"short request beside 3 long answers / idle, {name}",
                ratio,
                "x",
                note=note,
                **target,
            )
        )
    saturation = report.get("saturation")
    if saturation:
        c, s = saturation["continuous"]["tok_s"], saturation["static"]["tok_s"]
        answers = [saturation[name]["answered"] for name in SCHEDULERS]
        note = f"{c:.1f} vs {s:.1f} tok/s; {answers[0]} vs {answers[1]} answers"
        out.append(
            Metric(
                "saturation.throughput_ratio",
                "throughput at saturation, continuous / static",
                c / s,
                "x",
                op=">=",
                threshold=1.5,
                note=note,
            )
        )
    for p in phases:
        label = f"{p['scheduler']} at {p['rate']}/s: p50 / p99 latency"
        note = (
            f"TTFT p50 {p['ttft_p50_s']} p99 {p['ttft_p99_s']} s; {p['throughput_tok_s']} tok/s; "
            f"short steered p50 {p['short_steered_p50_s']} s; failed {p['failed']}/{p['requests']}"
        )
        out.append(
            Metric(
                f"load.{p['scheduler']}_{p['rate']}",
                label,
                p["latency_p50_s"],
                "s",
                note=note,
                detail={"p99": p["latency_p99_s"]},
            )
        )
    training = report.get("training")
    if training and training["during_training"]:
        ratio = median(training["during_training"]) / median(training["idle"])
        note = f"p50 {median(training['during_training']):.2f} s vs {median(training['idle']):.2f} s idle"
        out.append(
            Metric(
                "training.p50_ratio",
                "short request while soft injection trains / idle",
                ratio,
                "x",
                op="<=",
                threshold=1.5,
                note=note,
            )
        )
    for key, value in report.get("decode", {}).items():
        if isinstance(value, dict):
            out.append(
                Metric(
                    f"decode.{key}",
                    f"steered decode per token / plain, {key}",
                    value["ratio"],
                    "x",
                    op="<=",
                    threshold=1.03,
                    note=f"{value['ms']:.1f} ms/token",
                )
            )
    return out


def table(metrics: list[Metric], header: str) -> str:
    rows = [("metric", "value", "target", "result", "note")]
    for m in metrics:
        value = "" if m.value is None else f"{m.value:.3f} {m.unit}"
        if m.key.startswith("load.") and "p99" in m.detail:
            value = f"{m.value} / {m.detail['p99']} s"
        rows.append((m.label, value, m.target, m.status, m.note))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = [header] + ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(2, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--quick", action="store_true", help="a smoke run: short phases, small tasks")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--only", default=",".join(PHASES), help=f"comma-separated phases of {', '.join(PHASES)}")
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    plan = QUICK if args.quick else FULL
    began = time.perf_counter()
    report: dict[str, Any] = {"meta": {"model": args.model, "quick": args.quick, "plan": plan.__dict__}}
    report["meta"]["command"] = "python -m scripts.bench_load " + shlex.join(argv or sys.argv[1:])
    with LoadSampler() as sampler, tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        workdir = Path(tmp)
        log("starting a continuous and a static server")
        servers = start_servers(args.model, workdir)
        try:
            tasks, words, icv_id = register_tasks(servers["continuous"].url, plan)
            body = short_body(tasks, words)
            asyncio.run(probes(servers["continuous"].url, body, count=2, gap_s=0))  # warm-up
            asyncio.run(probes(servers["static"].url, body, count=2, gap_s=0))
            if {"idle", "long_load"} & only:
                report["idle"] = idle_phase(servers, plan, body)
                log(f"idle p50: { {k: round(median(v), 3) for k, v in report['idle'].items()} }")
            if "long_load" in only:
                report["long_load"] = long_load_phase(servers, plan, body)
            if "open_loop" in only:
                report["open_loop"] = open_loop_phase(servers, plan, tasks, words)
            if "saturation" in only:
                report["saturation"] = saturation_phase(servers, plan, tasks, words)
            if "training" in only:
                report["training"] = training_phase(servers["continuous"].url, plan, body)
            from steering.model.loading import load_model
            from steering.vectors.task_vector import TaskVector

            lm = load_model(args.model)
            with httpx.Client(base_url=servers["continuous"].url, timeout=60) as http:
                vector = lambda task_id: TaskVector.from_bytes(http.get(f"/v1/tasks/{task_id}/vector").content)  # noqa: E731
                icv_vector, tv_vector = vector(icv_id), vector(tasks[0].id)
            if "decode" in only:
                report["decode"] = decode_phase(lm, icv_vector, tv_vector, plan)
                ratios = {k: round(v["ratio"], 3) for k, v in report["decode"].items() if isinstance(v, dict)}
                log(f"decode ratios: {ratios}")
            if "reference" in only:
                rate = plan.rates[plan.reference_rate]
                trace = make_trace(rate, plan.duration_s, tasks, words, seed=17)
                outcomes, makespan = run_reference(lm, trace)
                summary = stats(outcomes, makespan)
                report.setdefault("open_loop", []).append({"scheduler": "reference", "rate": rate, **summary})
                log(f"reference at {rate}/s: {summary['throughput_tok_s']} tok/s, p50 {summary['latency_p50_s']} s")
        finally:
            for server in servers.values():
                server.stop()
    report["meta"].update(machine_facts(), **sampler.summary(), duration_s=round(time.perf_counter() - began, 1))
    metrics = metrics_of(report)
    report["metrics"] = {m.key: m.to_json() for m in metrics}
    meta = report["meta"]
    header = (
        f"steering bench-load: {args.model} ({meta['nproc']} CPUs, torch {meta['torch']}), load "
        f"{meta['load1_mean']} mean / {meta['load1_max']} max, {meta['duration_s']} s"
    )
    text = table(metrics, header)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str))
    args.out.with_suffix(".txt").write_text(text + "\n")
    title = f"{args.model}, {meta['nproc']} CPUs, load {meta['load1_mean']} mean"
    plots = plot_load(report.get("open_loop", []), args.out.parent, title)
    log(f"wrote {args.out}, {args.out.with_suffix('.txt')} and {', '.join(str(p) for p in plots)}")


if __name__ == "__main__":
    main()
