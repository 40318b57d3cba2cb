"""One request cannot hurt another; no task is stranded; quotas and pages bound what a key can take.

Hostile requests are sent in the same batch as good ones, and the good ones must come back exactly
as they come back alone. Faults that no request can cause (an engine that raises, a batcher loop
that breaks) are injected by wrapping the real objects: the only place these tests fake anything.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import torch
from fastapi import FastAPI

from app.main import is_loopback, refuse_open_public_server
from app.store import TaskRecord
from app.vector_cache import VectorCache
from steering.vectors.task_vector import TaskVector
from tests.api_helpers import (
    ANTONYMS,
    CAPITALS,
    LONG_TASK,
    SLOW_TASK,
    assert_error,
    metric,
    running_app,
    services_of,
    settings,
    task_body,
    wait_task,
)

PROMPT = "Q: hot\nA:"
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Api:
    app: FastAPI
    client: httpx.AsyncClient
    task: str

    async def post(self, path: str, body: Any) -> httpx.Response:
        # Encoded here so that NaN and huge integers reach the server as a careless client would send them.
        return await self.client.post(path, content=json.dumps(body), headers={"Content-Type": "application/json"})


@pytest_asyncio.fixture(scope="module")
async def api(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Api]:
    # A long window, so that requests sent together share a batch.
    config = settings(tmp_path_factory.mktemp("reliability"), batch_window_ms=150.0, max_strength=50.0)
    async with running_app(config) as (app, _):
        # A 500 is a response here, as over the network (the default transport re-raises the app's error).
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=120) as client:
            task = (await client.post("/v1/tasks", json=task_body(ANTONYMS))).json()["id"]
            assert (await wait_task(client, task))["status"] == "ready"
            yield Api(app, client, task)


def good_requests(task: str) -> list[dict[str, Any]]:
    return [
        {"prompt": PROMPT, "max_new_tokens": 6, "steering": [{"task": task, "strength": 2.0}]},
        {"prompt": "Q: big\nA:", "max_new_tokens": 5},
        {"input": "fast", "max_new_tokens": 4, "steering": [{"task": task}]},
        {"prompt": PROMPT, "max_new_tokens": 6, "temperature": 0.8, "seed": 7},
    ]


def report(case: str, responses: list[httpx.Response], lost: str = "nothing") -> None:
    """One row of docs/RELIABILITY.md (`pytest -s` prints them)."""
    statuses = [r.status_code for r in responses]
    server_errors = sum(s >= 500 for s in statuses)
    print(f"\nRELIABILITY | {case} | {len(statuses)} requests | 5xx: {server_errors} | lost: {lost}")


async def solo_answers(api: Api, bodies: list[dict[str, Any]]) -> list[str]:
    answers = []
    for body in bodies:
        response = await api.post("/v1/generate", body)
        assert response.status_code == 200, response.text
        answers.append(response.json()["text"])
    return answers


async def together(api: Api, bodies: list[dict[str, Any]], path: str = "/v1/generate") -> list[httpx.Response]:
    return list(await asyncio.gather(*(api.post(path, body) for body in bodies)))


HOSTILE_GENERATE: list[dict[str, Any]] = [
    {"prompt": PROMPT, "temperature": 0.7, "seed": 18446744073709551617},
    {"prompt": PROMPT, "temperature": 0.7, "seed": -(2**63) - 1},
    {"prompt": PROMPT, "temperature": 1e-300},
    {"prompt": PROMPT, "temperature": float("nan")},
    {"prompt": PROMPT, "top_p": 0.0},
    {"prompt": PROMPT, "stop": [""]},
    {"prompt": PROMPT, "stop": ["x"] * 9},
    {"prompt": PROMPT, "max_new_tokens": 10**30},
    {"messages": [{"role": "wizard", "content": "hi"}]},
]


async def test_hostile_sampler_values_are_refused_and_spare_their_batch(api: Api) -> None:
    good = good_requests(api.task)
    alone = await solo_answers(api, good)
    responses = await together(api, [*HOSTILE_GENERATE, *good])
    for body, response in zip(HOSTILE_GENERATE, responses, strict=False):
        assert_error(response, 422), body
    assert [r.json()["text"] for r in responses[len(HOSTILE_GENERATE) :]] == alone
    report("hostile sampler values sent in one batch with good requests", responses)


async def test_hostile_openai_bodies_get_422(api: Api) -> None:
    chat = {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}
    assert_error(await api.post("/v1/chat/completions", chat), 422)
    image = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}
    assert_error(await api.post("/v1/chat/completions", image), 422)
    tool = {"messages": [{"role": "tool", "content": "42"}]}
    assert_error(await api.post("/v1/chat/completions", tool), 422)
    assert_error(await api.post("/v1/completions", {"prompt": PROMPT, "seed": 2**64}), 422)
    assert_error(await api.post("/v1/completions", {"prompt": PROMPT, "temperature": 1e-9}), 422)
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hot"}]}], "max_tokens": 3}
    assert (await api.post("/v1/chat/completions", parts)).status_code == 200


async def test_a_layer_named_many_times_counts_once(api: Api) -> None:
    once = {"prompt": PROMPT, "max_new_tokens": 6, "steering": [{"task": api.task, "strength": 3.0, "layers": [1]}]}
    many = {**once, "steering": [{"task": api.task, "strength": 3.0, "layers": [1] * 5000}]}
    first, repeated = await solo_answers(api, [once, many])
    assert first == repeated
    response = await api.post("/v1/generate", many)
    assert response.json()["steering"][0]["layers"] == [1]
    for layers in ([2], [-1], []):
        body = {**once, "steering": [{"task": api.task, "layers": layers}]}
        assert_error(await api.post("/v1/generate", body), 422)
    for strength in (float("inf"), 51.0, -1e308):
        body = {**once, "steering": [{"task": api.task, "strength": strength}]}
        assert_error(await api.post("/v1/generate", body), 422)


async def test_a_row_whose_logits_overflow_fails_alone(api: Api) -> None:
    lm = services_of(api.app).lm
    huge = TaskVector(
        method="contrastive",
        mode="add_all",
        tensors={"residual": torch.full((lm.arch.num_layers, lm.arch.hidden_size), 3e38)},
        layers=list(range(lm.arch.num_layers)),
        default_strength=1.0,
        fingerprint=lm.fingerprint,
    )
    # The import's norm check refuses such a vector (tests/test_vector_bounds.py); with it lifted, the row must
    # still fail alone, so that a vector the check lets through cannot fail anyone else's request either.
    bounds = services_of(api.app).bounds
    measured = bounds.scale
    bounds.scale = dataclasses.replace(measured, residual=torch.full_like(measured.residual, float("inf")))
    try:
        imported = await api.client.post("/v1/tasks/import?format=safetensors", content=huge.to_bytes())
    finally:
        bounds.scale = measured
    assert imported.status_code in (200, 201), imported.text
    overflow = {"prompt": PROMPT, "max_new_tokens": 4, "steering": [{"task": imported.json()["id"], "strength": 50}]}
    good = good_requests(api.task)
    alone = await solo_answers(api, good)
    before = metric((await api.client.get("/metrics")).text, "steer_batch_size_count")
    responses = await together(api, [overflow, *good])
    assert_error(responses[0], 422, "generation_failed")
    assert [r.json()["text"] for r in responses[1:]] == alone
    report("a vector that overflows the logits, in one batch with good requests", responses)
    batches = metric((await api.client.get("/metrics")).text, "steer_batch_size_count") - before
    assert batches < len(good) + 1  # they did share a batch
    streamed_error = None  # a stream has answered 200 already: the failure is its last event, by its own type
    async with api.client.stream("POST", "/v1/generate", json={**overflow, "stream": True}) as response:
        async for line in response.aiter_lines():
            if line.startswith("data:") and "error" in (data := json.loads(line.split(":", 1)[1])):
                streamed_error = data["error"]
    assert streamed_error is not None and streamed_error["type"] == "generation_failed", streamed_error


class PoisonedModel:
    """The real model, except that once the poisoned prompt is in flight, the third forward pass that holds more
    than one row raises, and so does any later pass that prefills the poisoned prompt (its retry alone fails too).
    A fault of the model, so it reaches whichever scheduler runs the rows."""

    def __init__(self, lm, poison: list[int]) -> None:
        self.lm, self.poison = lm, torch.tensor(poison)
        self.armed, self.shared, self.failed_rows = False, 0, 0

    def __enter__(self) -> PoisonedModel:
        self.handle = self.lm.model.register_forward_pre_hook(self.check, with_kwargs=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()

    def check(self, module, args, kwargs) -> None:
        ids, n = kwargs["input_ids"].cpu(), len(self.poison)
        if ids.shape[1] >= n and any(torch.equal(row[-n:], self.poison) for row in ids):
            if self.failed_rows:
                raise RuntimeError("injected fault")
            self.armed = True
        if self.armed and ids.shape[0] > 1:
            self.shared += 1
            if self.shared == 3:
                self.failed_rows = ids.shape[0]
                raise RuntimeError("injected fault")


async def test_a_batch_that_raises_is_retried_row_by_row(api: Api) -> None:
    svc = services_of(api.app)
    poison_prompt = "Q: poison\nA:"
    good = good_requests(api.task)
    alone = await solo_answers(api, good)
    with PoisonedModel(svc.lm, svc.backend.engine.encode(poison_prompt)) as poisoned:
        stream_body = {**good[0], "stream": True}
        streamed = asyncio.ensure_future(read_stream(api.client, stream_body))
        responses = await together(api, [{"prompt": poison_prompt, "max_new_tokens": 8}, *good])
        text, done = await streamed
    assert poisoned.failed_rows > 1  # the poisoned row shared a step, which then failed
    error = assert_error(responses[0], 500, "internal_error")
    assert error["request_id"] == responses[0].headers["x-request-id"]
    assert [r.json()["text"] for r in responses[1:]] == alone
    # The streamed row was retried alone after the batch failed: its client saw each character once.
    assert text == done["text"] == alone[0]
    report("a batch that raises (injected), good rows retried alone", responses[1:])


async def read_stream(client: httpx.AsyncClient, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    text, done, event = "", {}, None
    async with client.stream("POST", "/v1/generate", json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                data = json.loads(line.split(":", 1)[1])
                if event == "token":
                    text += data["text"]
                elif event == "done":
                    done = data
    return text, done


async def test_a_fault_in_the_batcher_fails_its_batch_not_the_loop(api: Api) -> None:
    svc = services_of(api.app)
    histogram = svc.metrics.batch_size
    calls = [0]

    class BreaksOnce:
        def observe(self, value: float) -> None:
            calls[0] += 1
            if calls[0] == 1:
                raise RuntimeError("injected fault in the batcher loop")
            histogram.observe(value)

    svc.metrics.batch_size = BreaksOnce()
    try:
        first = await api.post("/v1/generate", {"prompt": PROMPT, "max_new_tokens": 2})
        second = await api.post("/v1/generate", {"prompt": PROMPT, "max_new_tokens": 2})
    finally:
        svc.metrics.batch_size = histogram
    assert_error(first, 500, "internal_error")  # the batch it was in failed, with its request id
    assert second.status_code == 200, second.text
    assert (await api.client.get("/readyz")).json()["batcher"] == "ok"


async def test_quotas_per_key(tmp_path: Path) -> None:
    config = settings(tmp_path, api_keys="alpha,beta", max_tasks_per_key=2, max_computations_per_key=1)
    alpha, beta = {"Authorization": "Bearer alpha"}, {"Authorization": "Bearer beta"}
    async with running_app(config) as (_, client):
        slow = await client.post("/v1/tasks", json=SLOW_TASK, headers=alpha)
        assert slow.status_code == 202
        busy = await client.post("/v1/tasks", json=task_body(CAPITALS), headers=alpha)
        error = assert_error(busy, 429, "computation_quota_exceeded")
        assert "limit is 1" in error["message"] and busy.headers["retry-after"]
        assert (await client.post("/v1/tasks", json=task_body(CAPITALS), headers=beta)).status_code == 202
        assert (await client.post("/v1/tasks", json=SLOW_TASK, headers=alpha)).status_code in (200, 202)  # known
        client.headers.update(alpha)
        await wait_task(client, slow.json()["id"], timeout_s=120)
        assert (await client.post("/v1/tasks", json=task_body(CAPITALS))).status_code == 202
        full = await client.post("/v1/tasks", json=task_body(ANTONYMS))
        assert_error(full, 429, "task_quota_exceeded")
        assert (await client.get("/v1/tasks")).json()["total"] == 2


async def test_the_task_list_is_paginated(tmp_path: Path) -> None:
    async with running_app(settings(tmp_path, max_computations_per_key=10)) as (_, client):
        ids = []
        for n in range(5):
            body = task_body(ANTONYMS[: 4 + n])
            ids.append((await client.post("/v1/tasks", json=body)).json()["id"])
        seen, offset = [], 0
        while offset is not None:
            page = (await client.get("/v1/tasks", params={"limit": 2, "offset": offset})).json()
            assert page["total"] == 5 and len(page["tasks"]) <= 2
            assert all(t["demonstrations"] is None and t["num_demonstrations"] >= 4 for t in page["tasks"])
            seen += [t["id"] for t in page["tasks"]]
            offset = page["next_offset"]
        assert sorted(seen) == sorted(ids) and len(seen) == 5
        full = (await client.get("/v1/tasks", params={"include_demonstrations": True, "limit": 1})).json()
        assert full["tasks"][0]["demonstrations"]
        assert_error(await client.get("/v1/tasks", params={"limit": 0}), 422)
        assert_error(await client.get("/v1/tasks", params={"limit": 10**6}), 422)


async def test_a_computation_past_its_time_limit_fails_with_the_reason(tmp_path: Path) -> None:
    async with running_app(settings(tmp_path, compute_timeout_s=1.0)) as (_, client):
        task = (await client.post("/v1/tasks", json=LONG_TASK)).json()["id"]
        started = time.monotonic()
        info = await wait_task(client, task, timeout_s=120)
        assert info["status"] == "failed" and "longer than 1 s" in info["error"]
        assert time.monotonic() - started < 10  # stopped soon after the limit, not at the end of the work


async def test_autos_ceiling_sits_under_the_servers_compute_timeout(tmp_path: Path) -> None:
    """With no `time_budget_s`, `auto` stops starting candidates at 5/6 of the server's compute timeout, so a
    slow model ends with its best candidate instead of failing at the limit (the clock is tests/test_auto_budget)."""
    fast = {
        "num_prompts": 4,
        "k_shot": 3,
        "candidates": ["task_vector", "function_vector"],
        "method_options": {"function_vector": {"num_heads": 4}},
    }
    async with running_app(settings(tmp_path, compute_timeout_s=600.0)) as (_, client):
        task = (await client.post("/v1/tasks", json=task_body(ANTONYMS, "auto", options=fast))).json()["id"]
        info = await wait_task(client, task, timeout_s=120)
        assert info["status"] == "ready", info
        assert info["metrics"]["auto"]["budget"] == {"rule": "every candidate, within the ceiling", "ceiling_s": 500}


def stored_record(lm, **fields: Any) -> TaskRecord:
    now = time.time()
    spec = {
        "demonstrations": task_body(ANTONYMS)["demonstrations"],
        "template": {"example": "Q: {input}\nA: {output}", "query": "Q: {input}\nA:", "separator": "\n\n"},
        "options": {},
    }
    values = {"id": "task-" + "a" * 24, "method": "task_vector", "spec": spec, "fingerprint": lm.fingerprint}
    return TaskRecord(**{**values, "created_at": now, "updated_at": now, **fields})


async def wait_stored(store, task_id: str, timeout_s: float = 60) -> TaskRecord:
    """Poll the store directly (a GET through the API would itself adopt the task)."""
    deadline = time.monotonic() + timeout_s
    while (record := await store.get(task_id)) is not None and record.status not in ("ready", "failed"):
        assert time.monotonic() < deadline, f"{task_id} still {record.status}"
        await asyncio.sleep(0.05)
    assert record is not None
    return record


async def test_the_reconciler_adopts_and_caps_stranded_tasks(tmp_path: Path) -> None:
    async with running_app(settings(tmp_path, reconcile_interval_s=0.2, max_attempts=2)) as (app, _):
        svc = services_of(app)
        # Left running by a replica that died, with no lock any more: adopted and computed, nobody asking.
        orphan = stored_record(svc.lm, status="running", attempts=1)
        assert await svc.store.create(orphan)
        record = await wait_stored(svc.store, orphan.id)
        assert record.status == "ready" and record.attempts == 2 and record.orphaned == 1
        assert await svc.store.get_vector(orphan.id) is not None
        # Out of attempts: failed, with the reason.
        hopeless = stored_record(svc.lm, id="task-" + "b" * 24, status="running", attempts=2, orphaned=1)
        assert await svc.store.create(hopeless)
        record = await wait_stored(svc.store, hopeless.id)
        assert record.status == "failed" and "gave up after 2 attempts" in (record.error or "")


async def test_a_computation_stops_when_another_replica_finishes_its_task(tmp_path: Path) -> None:
    """After a store outage two replicas can compute one task: the one whose lock lapsed, and the one that took
    it over. When one finishes, the other stops at its next heartbeat, and releases the lock, instead of
    computing on, holding the lock, and writing the task again."""
    async with running_app(settings(tmp_path, lock_ttl_s=1.5)) as (app, client):
        svc = services_of(app)
        quick = (await client.post("/v1/tasks", json=task_body(ANTONYMS))).json()["id"]
        assert (await wait_task(client, quick))["status"] == "ready"
        elsewhere = await svc.store.get_vector(quick)
        assert elsewhere is not None
        long = (await client.post("/v1/tasks", json=LONG_TASK)).json()["id"]
        assert (await wait_task(client, long, until=("running", "ready", "failed")))["status"] == "running"
        summary = (await svc.store.get(quick)).summary  # type: ignore[union-attr]
        # What the other replica's final write does (here with another task's vector, to tell the two apart).
        assert await svc.store.finish(long, elsewhere, status="ready", summary=summary, progress=None, error=None)
        stopped = time.monotonic()
        while svc.worker.busy:
            assert time.monotonic() - stopped < 10, "still computing a task another replica finished"
            await asyncio.sleep(0.05)
        assert await svc.store.acquire_lock(long, "someone-else", 1.5)  # this replica let go of the lock
        assert await svc.store.get_vector(long) == elsewhere  # and wrote nothing over the other replica's result
        record = await svc.store.get(long)
        assert record is not None and record.status == "ready"
        exposition = (await client.get("/metrics")).text
        assert metric(exposition, "steer_vector_computations_total", outcome="cancelled") == 1


async def test_a_ready_task_that_lost_its_vector_recomputes_it(tmp_path: Path) -> None:
    async with running_app(settings(tmp_path)) as (app, client):
        svc = services_of(app)
        task = (await client.post("/v1/tasks", json=task_body(ANTONYMS))).json()["id"]
        assert (await wait_task(client, task))["status"] == "ready"
        record = await svc.store.get(task)
        await svc.store.delete(task)  # record and vector gone; the record comes back alone
        assert await svc.store.create(record)
        svc.tasks.vectors.drop(task)
        use = {"prompt": PROMPT, "max_new_tokens": 3, "steering": [{"task": task}]}
        assert_error(await client.post("/v1/generate", json=use), 409, "task_not_ready")
        assert (await wait_task(client, task))["status"] == "ready"
        assert (await client.post("/v1/generate", json=use)).status_code == 200


def test_the_vector_cache_is_bounded_in_bytes(tiny_llama) -> None:
    def vector(rows: int) -> TaskVector:
        residual = torch.zeros(rows, 16)  # 64 bytes a row
        return TaskVector("contrastive", "add_all", {"residual": residual}, [0], 1.0, tiny_llama.fingerprint)

    cache = VectorCache(max_bytes=1000)
    for n in range(5):
        cache.put(stored_record(tiny_llama, id=f"task-{n}"), vector(4))  # 256 bytes each
    assert len(cache) == 3 and cache.nbytes == 768
    assert cache.get("task-0") is None and cache.get("task-4") is not None
    cache.put(stored_record(tiny_llama, id="task-big"), vector(100))  # larger than the whole cache: not kept
    assert cache.get("task-big") is None and cache.nbytes == 768


def test_an_open_server_only_listens_on_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("example.org")
    refuse_open_public_server(settings(Path("/tmp"), host="127.0.0.1"))
    refuse_open_public_server(settings(Path("/tmp"), host="0.0.0.0", api_keys="k"))
    refuse_open_public_server(settings(Path("/tmp"), host="0.0.0.0", allow_open=True))
    with pytest.raises(SystemExit, match="STEER_API_KEYS"):
        refuse_open_public_server(settings(Path("/tmp"), host="0.0.0.0"))
    # The real entry point refuses before loading anything.
    env = {"PATH": "/usr/bin:/bin", "STEER_HOST": "0.0.0.0", "STEER_API_KEYS": "", "STEER_MODEL": "tiny:llama"}
    done = subprocess.run([sys.executable, "-m", "app"], cwd=ROOT, env=env, capture_output=True, timeout=60)
    assert done.returncode != 0 and b"STEER_API_KEYS" in done.stderr
