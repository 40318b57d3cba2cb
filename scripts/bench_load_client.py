"""The clients of `make bench-load`: an open-loop sender of a trace, closed-loop background clients, and probes.

Latency is counted from the moment a request was due (open loop: a late sender does not hide queueing)
to its last byte. Time to first token is the first `token` event for streams, and the server's own
`timing.queue_s + timing.first_token_s` for whole answers (no byte reaches the client earlier).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from scripts.bench_load_trace import Request

TIMEOUT_S = 900.0


@dataclass
class Outcome:
    kind: str
    stream: bool
    steered: bool
    status: int
    latency_s: float
    ttft_s: float | None
    tokens: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


async def send(client: httpx.AsyncClient, body: dict[str, Any], due: float, kind: str = "") -> Outcome:
    """One request; `due` is the perf_counter time it was meant to leave."""
    steered = bool(body.get("steering"))
    if not body.get("stream"):
        response = await client.post("/v1/generate", json=body)
        latency = time.perf_counter() - due
        if response.status_code != 200:
            return Outcome(kind, False, steered, response.status_code, latency, None, 0)
        data = response.json()
        timing = data.get("timing", {})
        ttft = timing.get("queue_s", 0.0) + timing.get("first_token_s", 0.0)
        return Outcome(kind, False, steered, 200, latency, ttft, data["usage"]["completion_tokens"])
    first: float | None = None
    tokens, event = 0, ""
    async with client.stream("POST", "/v1/generate", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            return Outcome(kind, True, steered, response.status_code, time.perf_counter() - due, None, 0)
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                if event == "token" and first is None:
                    first = time.perf_counter() - due
                elif event == "done":
                    tokens = json.loads(line.split(":", 1)[1])["usage"]["completion_tokens"]
                elif event == "error":
                    return Outcome(kind, True, steered, 500, time.perf_counter() - due, first, 0)
    return Outcome(kind, True, steered, 200, time.perf_counter() - due, first, tokens)


async def run_trace(url: str, trace: list[Request]) -> tuple[list[Outcome], float]:
    """Send every request at its time; the outcomes and the seconds from the first arrival to the last answer."""
    async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT_S, limits=httpx.Limits(max_connections=None)) as client:
        start = time.perf_counter() + 0.05

        async def one(request: Request) -> Outcome:
            due = start + request.at
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            try:
                return await send(client, request.body, due, request.kind)
            except httpx.HTTPError:
                return Outcome(request.kind, request.stream, request.steered, 0, time.perf_counter() - due, None, 0)

        outcomes = await asyncio.gather(*(one(r) for r in trace))
        return list(outcomes), time.perf_counter() - (start + trace[0].at)


async def probes(
    url: str,
    make_body: Callable[[int], dict[str, Any]],
    *,
    seconds: float | None = None,
    count: int | None = None,
    gap_s: float = 0.25,
    until: Callable[[], bool] | None = None,
) -> list[float]:
    """Latencies of requests sent one after another (with `gap_s` between), for a time, a count or a condition."""
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT_S) as client:
        end = time.perf_counter() + seconds if seconds is not None else None
        n = 0
        while True:
            if count is not None and n >= count:
                break
            if end is not None and time.perf_counter() >= end:
                break
            if until is not None and until():
                break
            outcome = await send(client, make_body(n), time.perf_counter())
            if outcome.status == 200:
                latencies.append(outcome.latency_s)
            n += 1
            await asyncio.sleep(gap_s)
    return latencies


async def with_background(url: str, body: dict[str, Any], clients: int, work) -> tuple[Any, int]:
    """Run `work` while `clients` closed-loop clients each send `body` again as soon as it is answered.

    At the end the background clients hang up (the server cancels their rows) rather than wait."""
    stop = asyncio.Event()
    done = [0]

    async def loop(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            await send(client, body, time.perf_counter())
            done[0] += 1

    async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT_S) as client:
        background = [asyncio.ensure_future(loop(client)) for _ in range(clients)]
        await asyncio.sleep(1.0)  # let the long answers get going
        try:
            result = await work
        finally:
            stop.set()
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
    return result, done[0]


async def closed_loop(url: str, bodies: list[dict[str, Any]], clients: int, seconds: float) -> tuple[int, int]:
    """`clients` clients each stream the next body as soon as their last one ends, for `seconds`.

    Returns the text pieces received in time (one per decode step of a row: the tokens the server produced in
    the window, counting the rows still running at the end) and the requests answered in time. At the end
    the clients hang up, and the server cancels what was still running."""
    queue = iter(bodies * 100)
    pieces, answered = [0], [0]
    deadline = time.perf_counter() + seconds

    async def one(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
        event = ""
        async with client.stream("POST", "/v1/generate", json={**body, "stream": True}) as response:
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and time.perf_counter() < deadline:
                    pieces[0] += event == "token"
                    answered[0] += event == "done"

    async def loop(client: httpx.AsyncClient) -> None:
        for body in queue:
            await one(client, body)

    async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT_S, limits=httpx.Limits(max_connections=None)) as client:
        tasks = [asyncio.ensure_future(loop(client)) for _ in range(clients)]
        await asyncio.wait(tasks, timeout=seconds)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return pieces[0], answered[0]
