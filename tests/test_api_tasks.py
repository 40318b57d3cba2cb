"""The task API on both store backends (embedded SQLite and a real redis-server), in process.

Registering is idempotent by content hash, identical concurrent posts compute once, computation
runs off the request path through pending -> running -> ready | failed, and the vector cache and
the store keep what was computed.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
import torch
from fastapi import FastAPI

from app.settings import Settings
from steering.vectors.task_vector import TaskVector
from tests.api_helpers import (
    ANTONYMS,
    CAPITALS,
    FAILING_TASK,
    SLOW_TASK,
    assert_error,
    metric,
    running_app,
    services_of,
    settings,
    task_body,
    wait_task,
)
from tests.store_fixtures import free_port


@dataclass
class Api:
    app: FastAPI
    client: httpx.AsyncClient
    config: Settings
    backend: str

    async def metrics(self) -> str:
        return (await self.client.get("/metrics")).text

    async def computations(self, **labels: str) -> float:
        return metric(await self.metrics(), "steer_vector_computations_total", **labels)


@pytest_asyncio.fixture(scope="module", params=["sqlite", "redis"])
async def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Api]:
    overrides = {}
    if request.param == "redis":
        overrides = {"redis_url": request.getfixturevalue("redis_url"), "redis_prefix": f"t{uuid.uuid4().hex[:8]}:"}
    config = settings(tmp_path_factory.mktemp(f"tasks-{request.param}"), lock_ttl_s=5.0, **overrides)
    async with running_app(config) as (app, client):
        yield Api(app, client, config, request.param)


async def wait_idle(api: Api, timeout_s: float = 60.0) -> None:
    """Until this app's vector worker follows no task."""
    worker = services_of(api.app).worker
    deadline = time.monotonic() + timeout_s
    while worker.busy and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert worker.busy == 0


async def test_post_then_ready_and_same_id_again(api: Api) -> None:
    body = task_body(ANTONYMS, name="antonyms")
    first = await api.client.post("/v1/tasks", json=body)
    assert first.status_code == 202, first.text
    created = first.json()
    assert set(created) == {"id", "status", "name"} and created["status"] == "pending"
    task_id = created["id"]
    assert first.headers["location"] == f"/v1/tasks/{task_id}"

    info = await wait_task(api.client, task_id)
    assert info["status"] == "ready", info
    assert info["id"] == task_id and info["method"] == "task_vector" and info["name"] == "antonyms"
    assert info["num_demonstrations"] == len(ANTONYMS)
    assert info["error"] is None and info["progress"] is None
    assert info["layers"] and all(0 <= layer < 2 for layer in info["layers"])
    assert isinstance(info["default_strength"], float)
    assert "compute_seconds" in info["metrics"] and "dev_steered_accuracy" in info["metrics"]
    assert info["options"]["k_shot"] == 5  # defaults filled in
    assert info["template"] == {"example": "Q: {input}\nA: {output}", "query": "Q: {input}\nA:", "separator": "\n\n"}

    # The vector kept in memory and the one read back from the store are bit-identical. The worker keeps it in
    # memory right after the store's write returns, and a poll can see that write first (on a loaded machine).
    vectors = services_of(api.app).tasks.vectors
    deadline = time.monotonic() + 10
    while vectors.get(task_id) is None and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    computed = vectors.get(task_id).vector
    data = await services_of(api.app).store.get_vector(task_id)
    assert computed is not None and data is not None
    stored = TaskVector.from_bytes(data)
    assert stored.tensors.keys() == computed.tensors.keys()
    for name, tensor in computed.tensors.items():
        assert stored.tensors[name].dtype == tensor.dtype and torch.equal(stored.tensors[name], tensor.cpu())
    assert stored.metadata() == computed.metadata()

    before = await api.computations()
    again = await api.client.post("/v1/tasks", json=body)
    assert again.status_code == 200, again.text
    assert again.json() == {"id": task_id, "status": "ready", "name": "antonyms"}
    renamed = await api.client.post("/v1/tasks", json={**body, "name": "another name"})
    assert renamed.status_code == 200 and renamed.json()["id"] == task_id  # the name is not part of the content
    assert renamed.json()["name"] == "another name"  # but posting under another (free) name renames the task
    unnamed = await api.client.post("/v1/tasks", json={k: v for k, v in body.items() if k != "name"})
    assert unnamed.json()["name"] == "another name"  # no name: it keeps its own
    assert await api.computations() == before  # nothing recomputed

    # Defaults written out explicitly are the same content.
    explicit = await api.client.post("/v1/tasks", json={**body, "options": {"k_shot": 5, "seed": 0}})
    assert explicit.json()["id"] == task_id
    templated = {**body, "template": {"example": "Q: {input}\nA: {output}", "query": "Q: {input}\nA:"}}
    assert (await api.client.post("/v1/tasks", json=templated)).json()["id"] == task_id

    # Anything in the content changes the id.
    other_ids = set()
    content = {k: v for k, v in body.items() if k != "name"}  # the name is the first task's
    for variant in (
        {**content, "options": {"seed": 1}},
        {**content, "template": {"example": "{input} -> {output}", "query": "{input} ->"}},
        task_body(ANTONYMS[:-1]),
        task_body([*ANTONYMS[:-1], ("happy", "glad")]),
    ):
        response = await api.client.post("/v1/tasks", json=variant)
        assert response.status_code == 202, response.text
        other_ids.add(response.json()["id"])
    assert len(other_ids) == 4 and task_id not in other_ids
    for other in other_ids:  # not needed: stop their computations
        assert (await api.client.delete(f"/v1/tasks/{other}")).status_code == 204
    await wait_idle(api)


async def test_concurrent_identical_posts_compute_once(api: Api) -> None:
    body = task_body(CAPITALS, options={"seed": 7})
    before = await api.computations()
    responses = await asyncio.gather(*(api.client.post("/v1/tasks", json=body) for _ in range(12)))
    assert all(r.status_code in (200, 202) for r in responses), [r.text for r in responses]
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 1
    task_id = ids.pop()
    assert (await wait_task(api.client, task_id))["status"] == "ready"
    assert await api.computations() - before == 1
    record = await services_of(api.app).store.get(task_id)
    assert record is not None and record.attempts == 1
    listed = [t["id"] for t in (await api.client.get("/v1/tasks")).json()["tasks"]]
    assert listed.count(task_id) == 1


async def test_computation_runs_off_the_request_path(api: Api) -> None:
    body = {**SLOW_TASK, "options": {**SLOW_TASK["options"], "seed": 11 if api.backend == "sqlite" else 12}}
    response = await api.client.post("/v1/tasks", json=body)
    assert response.status_code == 202 and response.json()["status"] == "pending", response.text
    task_id = response.json()["id"]

    seen: list[str] = []
    progress_seen = False
    slowest_health = 0.0
    refused_while_computing = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        started = time.perf_counter()
        assert (await api.client.get("/healthz")).status_code == 200
        slowest_health = max(slowest_health, time.perf_counter() - started)
        info = (await api.client.get(f"/v1/tasks/{task_id}")).json()
        if not seen or seen[-1] != info["status"]:
            seen.append(info["status"])
        progress_seen = progress_seen or info["progress"] is not None
        if info["status"] in ("pending", "running") and refused_while_computing is None:
            refused_while_computing = await api.client.post(
                "/v1/generate", json={"prompt": "Q: hot\nA:", "steering": [{"task": task_id}]}
            )
        if info["status"] in ("ready", "failed"):
            break
        await asyncio.sleep(0.02)
    assert seen[-1] == "ready", seen
    assert "running" in seen, seen
    order = ["pending", "running", "ready"]
    assert [order.index(s) for s in seen] == sorted(order.index(s) for s in seen), seen
    assert progress_seen, "a running task reports its progress"
    assert slowest_health < 1.0, f"the server stalled for {slowest_health:.2f} s while computing"
    assert refused_while_computing is not None
    error = assert_error(refused_while_computing, 409, "task_not_ready")
    assert error["status"] in ("pending", "running")


async def test_failed_computation_keeps_its_error(api: Api) -> None:
    before = await api.computations(outcome="failed")
    response = await api.client.post("/v1/tasks", json=FAILING_TASK)
    assert response.status_code == 202, response.text
    task_id = response.json()["id"]
    info = await wait_task(api.client, task_id)
    assert info["status"] == "failed", info
    assert info["error"] and "RuntimeError" in info["error"]
    assert info["layers"] is None and info["progress"] is None
    assert await api.computations(outcome="failed") - before == 1
    assert await services_of(api.app).store.get_vector(task_id) is None

    use = await api.client.post("/v1/generate", json={"prompt": "x", "steering": [{"task": task_id}]})
    assert assert_error(use, 409, "task_not_ready")["status"] == "failed"

    # Posting a failed task again retries it, and it fails again with its error kept.
    retry = await api.client.post("/v1/tasks", json=FAILING_TASK)
    assert retry.status_code == 202 and retry.json() == {"id": task_id, "status": "pending"}
    info = await wait_task(api.client, task_id)
    assert info["status"] == "failed" and "RuntimeError" in info["error"]
    record = await services_of(api.app).store.get(task_id)
    assert record is not None and record.attempts == 2


async def test_list_get_and_delete(api: Api) -> None:
    body = task_body(ANTONYMS[:6], options={"seed": 3})
    task_id = (await api.client.post("/v1/tasks", json=body)).json()["id"]
    await wait_task(api.client, task_id)
    listing = (await api.client.get("/v1/tasks")).json()["tasks"]
    mine = [t for t in listing if t["id"] == task_id]
    assert len(mine) == 1 and mine[0]["status"] == "ready" and mine[0]["num_demonstrations"] == 6
    created = [t["created_at"] for t in listing]
    assert created == sorted(created, reverse=True)  # newest first

    gone = await api.client.delete(f"/v1/tasks/{task_id}")
    assert gone.status_code == 204 and gone.content == b""
    assert_error(await api.client.get(f"/v1/tasks/{task_id}"), 404, "not_found")
    assert_error(await api.client.delete(f"/v1/tasks/{task_id}"), 404, "not_found")
    use = await api.client.post("/v1/generate", json={"prompt": "x", "steering": [{"task": task_id}]})
    assert_error(use, 404, "not_found")
    assert task_id not in [t["id"] for t in (await api.client.get("/v1/tasks")).json()["tasks"]]
    store = services_of(api.app).store
    assert await store.get(task_id) is None and await store.get_vector(task_id) is None
    assert_error(await api.client.get("/v1/tasks/task-doesnotexist"), 404, "not_found")

    # Registered again after deletion: computed afresh under the same id.
    again = await api.client.post("/v1/tasks", json=body)
    assert again.status_code == 202 and again.json()["id"] == task_id
    assert (await wait_task(api.client, task_id))["status"] == "ready"


async def test_delete_while_computing_stops_the_computation(api: Api) -> None:
    body = {**SLOW_TASK, "options": {**SLOW_TASK["options"], "seed": 21 if api.backend == "sqlite" else 22}}
    task_id = (await api.client.post("/v1/tasks", json=body)).json()["id"]
    await wait_task(api.client, task_id, until=("running",))
    before = await api.computations(outcome="cancelled")
    assert (await api.client.delete(f"/v1/tasks/{task_id}")).status_code == 204
    await wait_idle(api)
    assert await api.computations(outcome="cancelled") - before == 1
    store = services_of(api.app).store
    assert await store.get(task_id) is None and await store.get_vector(task_id) is None
    assert_error(await api.client.get(f"/v1/tasks/{task_id}"), 404, "not_found")


async def test_vector_cache_hits_on_the_second_generate(api: Api) -> None:
    task_id = (await api.client.post("/v1/tasks", json=task_body(ANTONYMS))).json()["id"]
    await wait_task(api.client, task_id)
    services_of(api.app).tasks.vectors.drop(task_id)  # as if evicted: the next use reads the store
    request = {"prompt": "Q: hot\nA:", "max_new_tokens": 4, "steering": [{"task": task_id}]}
    text = await api.metrics()
    hits = metric(text, "steer_vector_cache_total", result="hit")
    misses = metric(text, "steer_vector_cache_total", result="miss")
    first = await api.client.post("/v1/generate", json=request)
    assert first.status_code == 200, first.text
    text = await api.metrics()
    assert metric(text, "steer_vector_cache_total", result="miss") == misses + 1
    assert metric(text, "steer_vector_cache_total", result="hit") == hits
    second = await api.client.post("/v1/generate", json=request)
    text = await api.metrics()
    assert metric(text, "steer_vector_cache_total", result="hit") == hits + 1
    assert metric(text, "steer_vector_cache_total", result="miss") == misses + 1
    assert second.json()["text"] == first.json()["text"]


async def test_tasks_survive_a_restart(api: Api, tmp_path: Path) -> None:
    """A second app on the same store (a restart on SQLite, another replica on Redis) sees the tasks."""
    config = settings(tmp_path, redis_url=api.config.redis_url, redis_prefix=f"r{uuid.uuid4().hex[:8]}:")
    if api.backend == "sqlite":
        config = settings(tmp_path / "data")
    body = task_body(CAPITALS, options={"seed": 5})
    request = {"prompt": "Q: Spain\nA:", "max_new_tokens": 6, "steering": [{"task": ""}]}
    async with running_app(config) as (_, client):
        task_id = (await client.post("/v1/tasks", json=body)).json()["id"]
        info = await wait_task(client, task_id)
        request["steering"] = [{"task": task_id}]
        steered = (await client.post("/v1/generate", json=request)).json()["text"]
    async with running_app(config) as (app, client):
        after = (await client.get(f"/v1/tasks/{task_id}")).json()
        assert after == info
        response = await client.post("/v1/generate", json=request)
        assert response.status_code == 200 and response.json()["text"] == steered
        text = (await client.get("/metrics")).text
        assert metric(text, "steer_vector_cache_total", result="miss") == 1
        again = await client.post("/v1/tasks", json=body)
        assert again.status_code == 200 and again.json() == {"id": task_id, "status": "ready"}
        assert metric((await client.get("/metrics")).text, "steer_vector_computations_total") == 0
        assert services_of(app).worker.busy == 0


async def test_store_down_answers_503_and_generation_goes_on(tmp_path: Path) -> None:
    config = settings(tmp_path, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    async with running_app(config) as (_, client):
        assert (await client.get("/healthz")).status_code == 200
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and ready.headers["retry-after"]
        assert ready.json()["store"] == "unreachable"
        for response in (
            await client.post("/v1/tasks", json=task_body()),
            await client.get("/v1/tasks"),
            await client.get("/v1/tasks/task-x"),
            await client.post("/v1/generate", json={"prompt": "x", "steering": [{"task": "task-x"}]}),
        ):
            assert_error(response, 503, "store_unavailable")
            assert int(response.headers["retry-after"]) >= 1
        plain = await client.post("/v1/generate", json={"prompt": "Q: hot\nA:", "max_new_tokens": 4})
        assert plain.status_code == 200


async def _ready(api: Api, body: dict) -> str:
    response = await api.client.post("/v1/tasks", json=body)
    assert response.status_code in (200, 202), response.text
    task_id = response.json()["id"]
    assert (await wait_task(api.client, task_id))["status"] == "ready"
    return task_id


async def test_a_task_is_used_by_its_name_wherever_its_id_is(api: Api) -> None:
    task_id = await _ready(api, task_body(ANTONYMS, name="opposites", options={"seed": 41}))
    by_id = {"prompt": "Q: hot\nA:", "max_new_tokens": 4, "steering": [{"task": task_id, "strength": 1.5}]}
    by_name = {**by_id, "steering": [{"task": "opposites", "strength": 1.5}]}
    expected = (await api.client.post("/v1/generate", json=by_id)).json()["text"]
    named = await api.client.post("/v1/generate", json=by_name)
    assert named.status_code == 200 and named.json()["text"] == expected, named.text
    completion = {"prompt": "Q: hot\nA:", "max_tokens": 4, "temperature": 0, "steering": by_name["steering"]}
    assert (await api.client.post("/v1/completions", json=completion)).json()["choices"][0]["text"] == expected
    chat = {"messages": [{"role": "user", "content": "hot"}], "max_tokens": 4, "steering": by_name["steering"]}
    assert (await api.client.post("/v1/chat/completions", json=chat)).status_code == 200

    info = await api.client.get("/v1/tasks/opposites")
    assert info.status_code == 200 and info.json()["id"] == task_id and info.json()["name"] == "opposites"
    exported = await api.client.get("/v1/tasks/opposites/vector")
    assert exported.status_code == 200
    assert exported.content == (await api.client.get(f"/v1/tasks/{task_id}/vector")).content
    for missing in ("nobody", "task-" + "0" * 24):
        assert_error(await api.client.get(f"/v1/tasks/{missing}"), 404, "not_found")
        use = {**by_id, "steering": [{"task": missing}]}
        assert missing in assert_error(await api.client.post("/v1/generate", json=use), 404, "not_found")["message"]

    assert (await api.client.delete("/v1/tasks/opposites")).status_code == 204  # deleted by name: the name is free
    assert_error(await api.client.get(f"/v1/tasks/{task_id}"), 404, "not_found")
    assert_error(await api.client.post("/v1/generate", json=by_name), 404, "not_found")
    other = await api.client.post("/v1/tasks", json=task_body(CAPITALS, name="opposites", options={"seed": 41}))
    assert other.status_code == 202 and other.json()["name"] == "opposites"
    assert (await api.client.delete(f"/v1/tasks/{other.json()['id']}")).status_code == 204
    await wait_idle(api)


async def test_a_name_belongs_to_one_task_of_a_key(api: Api) -> None:
    first = await _ready(api, task_body(ANTONYMS, name="words", options={"seed": 42}))
    second_body = task_body(CAPITALS, name="words", options={"seed": 42})
    store = services_of(api.app).store
    before = await store.count(None)

    # Taken by another task: 409 naming that task, and nothing stored.
    taken = assert_error(await api.client.post("/v1/tasks", json=second_body), 409, "name_taken")
    assert first in taken["message"] and taken["task"] == first and "take_name" in taken["message"]
    assert await store.count(None) == before
    second = await _ready(api, {**second_body, "name": "capitals"})
    refused = assert_error(await api.client.post("/v1/tasks", json=second_body), 409, "name_taken")  # posted again
    assert refused["task"] == first and (await api.client.get(f"/v1/tasks/{second}")).json()["name"] == "capitals"
    patched = await api.client.patch(f"/v1/tasks/{second}", json={"name": "words"})
    assert_error(patched, 409, "name_taken")

    # take_name moves it: the task that had it stays, unnamed.
    moved = await api.client.post("/v1/tasks", json={**second_body, "take_name": True})
    assert moved.status_code == 200 and moved.json() == {"id": second, "status": "ready", "name": "words"}
    assert (await api.client.get(f"/v1/tasks/{first}")).json()["name"] is None
    assert (await api.client.get("/v1/tasks/words")).json()["id"] == second

    # PATCH renames, takes, and removes a name.
    renamed = await api.client.patch(f"/v1/tasks/{first}", json={"name": "antonyms v2"})
    assert renamed.status_code == 200 and renamed.json()["name"] == "antonyms v2"
    took = await api.client.patch("/v1/tasks/antonyms v2", json={"name": "words", "take_name": True})
    assert took.status_code == 200 and took.json()["id"] == first and took.json()["name"] == "words"
    assert (await api.client.get(f"/v1/tasks/{second}")).json()["name"] is None
    cleared = await api.client.patch("/v1/tasks/words", json={"name": None})
    assert cleared.status_code == 200 and cleared.json()["name"] is None
    assert_error(await api.client.get("/v1/tasks/words"), 404, "not_found")
    assert_error(await api.client.patch("/v1/tasks/words", json={"name": "x"}), 404, "not_found")
    assert_error(await api.client.patch(f"/v1/tasks/{first}", json={}), 422, "invalid_request")

    # Names that could pass for ids (or break a path or `--task NAME:STRENGTH`) are refused, naming the field.
    for bad in ("task-1234", "Task-x", "a:b", "a/b", " padded", "", "n" * 101, "tab\there"):
        for response in (
            await api.client.post("/v1/tasks", json={**second_body, "name": bad}),
            await api.client.patch(f"/v1/tasks/{first}", json={"name": bad}),
        ):
            assert assert_error(response, 422, "invalid_name")["message"].startswith("name: "), bad
    assert (await api.client.get(f"/v1/tasks/{first}")).json()["name"] is None
    assert await store.count(None) == before + 1
    for task_id in (first, second):
        assert (await api.client.delete(f"/v1/tasks/{task_id}")).status_code == 204


async def test_concurrent_registrations_of_one_name_one_winner(api: Api) -> None:
    bodies = [task_body(ANTONYMS[: 4 + i], name="contested", options={"seed": 43}) for i in range(6)]
    responses = await asyncio.gather(*(api.client.post("/v1/tasks", json=b) for b in bodies))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [202] + [409] * 5, [r.text for r in responses]
    winner = next(r.json()["id"] for r in responses if r.status_code == 202)
    assert all(r.json()["error"]["task"] == winner for r in responses if r.status_code == 409)
    assert (await api.client.get("/v1/tasks/contested")).json()["id"] == winner
    assert (await api.client.delete("/v1/tasks/contested")).status_code == 204
    await wait_idle(api)
