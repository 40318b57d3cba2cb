"""Measurements over HTTP against a real server process: vector computation, registration, batching, overhead."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from scripts.bench_common import interleaved, median, paired_ratios, percentile, timed
from scripts.server_process import ServerProcess, start_server_process
from steering.generation.rows import GenerationRequest
from steering.generation.transformers.engine import Engine
from steering.model.loading import LoadedModel
from steering.steer.inject import SteeringTerm
from steering.vectors.task_vector import TaskVector
from steering.wire.protocol import Demonstration


class ServerError(RuntimeError):
    pass


def start_server(
    model: str, data_dir: Path, log_path: Path, timeout_s: float = 300.0, extra_env: dict[str, str] | None = None
) -> ServerProcess:
    """`python -m app` with the embedded store in `data_dir`, on a free port; returns once /readyz answers 200."""
    env = {
        "STEER_MODEL": model,
        "STEER_DATA_DIR": str(data_dir),
        "STEER_API_KEYS": "",
        "STEER_MAX_COMPUTATIONS_PER_KEY": "64",  # the bench registers its whole suite at once
        **(extra_env or {}),
    }
    return start_server_process(env, log_path, timeout_s, unset=["STEER_REDIS_URL"], log_chars=3000)


def task_body(demos: Sequence[Demonstration], method: str, options: dict[str, Any], name: str) -> dict[str, Any]:
    return {
        "demonstrations": [d.model_dump() for d in demos],
        "method": method,
        "name": name,
        "options": options,
    }


def wait_ready(http: httpx.Client, task_id: str, timeout_s: float, poll_s: float = 0.05) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        info = http.get(f"/v1/tasks/{task_id}").raise_for_status().json()
        if info["status"] == "ready":
            return info
        if info["status"] == "failed":
            raise ServerError(f"task {task_id} failed: {info.get('error')}")
        if time.monotonic() > deadline:
            raise ServerError(f"task {task_id} still {info['status']} after {timeout_s} s")
        time.sleep(poll_s)


def fetch_vector(http: httpx.Client, task_id: str) -> TaskVector:
    return TaskVector.from_bytes(http.get(f"/v1/tasks/{task_id}/vector").raise_for_status().content)


@dataclass
class Computed:
    task_id: str
    wall_s: float
    compute_s: float | None
    vector: TaskVector


def compute_methods(
    http: httpx.Client,
    demos: Sequence[Demonstration],
    methods: Sequence[str],
    options: dict[str, dict[str, Any]],
    timeout_s: float,
    log: Callable[[str], None],
) -> dict[str, Computed]:
    """Register one task per method, one at a time: seconds from POST to ready, and the server's own count."""
    out: dict[str, Computed] = {}
    for method in methods:
        body = task_body(demos, method, options.get(method, {}), f"bench-{method}")
        started = time.perf_counter()
        created = http.post("/v1/tasks", json=body).raise_for_status().json()
        info = wait_ready(http, created["id"], timeout_s)
        wall = time.perf_counter() - started
        compute = (info.get("metrics") or {}).get("compute_seconds")
        out[method] = Computed(created["id"], wall, compute, fetch_vector(http, created["id"]))
        log(f"  {method}: {wall:.1f} s (server: {compute} s), layers {info.get('layers')}")
    return out


def register_known(http: httpx.Client, body: dict[str, Any], n: int) -> dict[str, Any]:
    """POST an already-ready task `n` times: each answer comes from the store, nothing is computed."""
    times, statuses = [], set()
    http.post("/v1/tasks", json=body).raise_for_status()  # warm-up
    for _ in range(n):
        started = time.perf_counter()
        response = http.post("/v1/tasks", json=body)
        times.append(time.perf_counter() - started)
        statuses.add(response.raise_for_status().json().get("status"))
    return {
        "p50_ms": percentile(times, 0.5) * 1000,
        "p90_ms": percentile(times, 0.9) * 1000,
        "max_ms": max(times) * 1000,
        "n": n,
        "statuses": sorted(s for s in statuses if s),
    }


def register_suite(
    http: httpx.Client,
    tasks: dict[str, Sequence[Demonstration]],
    options: dict[str, Any],
    timeout_s: float,
) -> tuple[dict[str, str], float]:
    """Register several tasks (task_vector) at once and wait for all; returns name -> id and the seconds taken."""
    started = time.perf_counter()
    ids = {
        name: http.post("/v1/tasks", json=task_body(demos, "task_vector", options, f"bench-{name}"))
        .raise_for_status()
        .json()["id"]
        for name, demos in tasks.items()
    }
    for task_id in ids.values():
        wait_ready(http, task_id, timeout_s, poll_s=0.25)
    return ids, time.perf_counter() - started


@dataclass
class ThroughputResult:
    ratio: float
    detail: dict[str, Any]


def measure_batching(
    url: str, bodies: Sequence[dict[str, Any]], reps: int, log: Callable[[str], None]
) -> ThroughputResult:
    """The same requests from len(bodies) concurrent clients vs one after another: tokens per second."""
    clients = [httpx.Client(base_url=url, timeout=600.0) for _ in bodies]
    pool = ThreadPoolExecutor(max_workers=len(bodies))
    record: dict[str, list[tuple[float, int, list[str], list[float]]]] = {"sequential": [], "concurrent": []}

    def post(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
        return client.post("/v1/generate", json=body).raise_for_status().json()

    def sequential() -> float:
        started = time.perf_counter()
        answers = [post(clients[0], body) for body in bodies]
        wall = time.perf_counter() - started
        record["sequential"].append(_summary(wall, answers))
        return wall

    def concurrent() -> float:
        started = time.perf_counter()
        answers = list(pool.map(post, clients, bodies))
        wall = time.perf_counter() - started
        record["concurrent"].append(_summary(wall, answers))
        return wall

    try:
        interleaved(
            {"sequential": sequential, "concurrent": concurrent},
            reps,
            on_rep=lambda r: log(f"  batching rep {r + 1}/{reps}"),
        )
    finally:
        pool.shutdown()
        for client in clients:
            client.close()
    seq, conc = record["sequential"][1:], record["concurrent"][1:]  # [0] was the warm-up
    seq_tps = [tokens / wall for wall, tokens, _, _ in seq]
    conc_tps = [tokens / wall for wall, tokens, _, _ in conc]
    ratios = paired_ratios(conc_tps, seq_tps)
    same_text = all(s[2] == c[2] for s, c in zip(seq, conc, strict=True))
    detail = {
        "clients": len(bodies),
        "max_new_tokens": bodies[0].get("max_new_tokens"),
        "tokens_per_round": seq[-1][1],
        "sequential_tokens_per_s": round(median(seq_tps), 2),
        "concurrent_tokens_per_s": round(median(conc_tps), 2),
        "sequential_wall_s": round(median([s[0] for s in seq]), 3),
        "concurrent_wall_s": round(median([c[0] for c in conc]), 3),
        "concurrent_queue_s_max": round(max(max(c[3]) for c in conc), 3),
        "ratios_per_rep": [round(r, 3) for r in ratios],
        "rows_identical_to_sequential": same_text,
    }
    return ThroughputResult(median(ratios), detail)


def _summary(wall: float, answers: list[dict[str, Any]]) -> tuple[float, int, list[str], list[float]]:
    tokens = sum(int(a["usage"]["completion_tokens"]) for a in answers)
    return wall, tokens, [a["text"] for a in answers], [float(a["timing"].get("queue_s", 0.0)) for a in answers]


@dataclass
class OverheadResult:
    ratio: float
    detail: dict[str, Any]


def measure_overhead(
    http: httpx.Client,
    lm: LoadedModel,
    prompt: str,
    task_id: str,
    vector: TaskVector,
    strength: float,
    max_new_tokens: int,
    reps: int,
    log: Callable[[str], None],
) -> OverheadResult:
    """One generate request over HTTP (one at a time) vs Engine.generate in-process: same prompt, vector, tokens."""
    engine = Engine(lm)
    prompt_ids = engine.encode(prompt)
    body = {"prompt": prompt, "steering": [{"task": task_id, "strength": strength}], "max_new_tokens": max_new_tokens}
    tokens: dict[str, int] = {}
    queued: list[float] = []

    def over_http() -> float:
        started = time.perf_counter()
        answer = http.post("/v1/generate", json=body).raise_for_status().json()
        wall = time.perf_counter() - started
        tokens["http"] = int(answer["usage"]["completion_tokens"])
        queued.append(float(answer["timing"].get("queue_s", 0.0)))  # includes the batcher's wait for company
        return wall

    def in_process() -> float:
        request = GenerationRequest(
            prompt_ids=list(prompt_ids), steering=(SteeringTerm(vector, strength),), max_new_tokens=max_new_tokens
        )
        results = []
        wall = timed(lambda: results.extend(engine.generate([request])))
        tokens["in_process"] = len(results[0].token_ids)
        return wall

    samples = interleaved(
        {"http": over_http, "in_process": in_process},
        reps,
        on_rep=lambda r: log(f"  overhead rep {r + 1}/{reps}"),
    )
    ratios = paired_ratios(samples["http"], samples["in_process"])
    http_ms, local_ms = median(samples["http"]) * 1000, median(samples["in_process"]) * 1000
    detail = {
        "http_ms": round(http_ms, 2),
        "in_process_ms": round(local_ms, 2),
        "difference_ms": round(http_ms - local_ms, 2),
        "server_queue_ms": round(median(queued[1:] or queued) * 1000, 2),
        "tokens_http": tokens.get("http"),
        "tokens_in_process": tokens.get("in_process"),
        "max_new_tokens": max_new_tokens,
        "ratios_per_rep": [round(r, 4) for r in ratios],
    }
    return OverheadResult(median(ratios), detail)
