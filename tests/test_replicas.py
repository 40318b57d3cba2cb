"""Several real server processes: replicas sharing Redis compute a task once, a replica killed in the
middle of a computation leaves no task stuck, and the embedded SQLite store survives a restart."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from app.store import SQLITE_FILENAME
from tests.api_helpers import ANTONYMS, CAPITALS, SLOW_TASK, metric, task_body, wait_task_sync
from tests.conftest import ServerProcess, start_server

LOCK_TTL_S = "3"


@dataclass
class Replicas:
    a: ServerProcess
    b: ServerProcess
    redis_url: str
    prefix: str

    def record(self, task_id: str) -> dict[str, Any]:
        client = redis.Redis.from_url(self.redis_url)
        try:
            raw = client.get(f"{self.prefix}task:{task_id}")
        finally:
            client.close()
        assert raw is not None
        return json.loads(raw)


def server_env(data_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "STEER_MODEL": "tiny:llama",
        "STEER_DATA_DIR": str(data_dir),
        "STEER_REDIS_URL": "",
        "STEER_API_KEYS": "",
        "STEER_LOCK_TTL_S": LOCK_TTL_S,
        **extra,
    }


def metric_of(server: ServerProcess, name: str, **labels: str) -> float:
    return metric(httpx.get(f"{server.url}/metrics", timeout=30).text, name, **labels)


@pytest.fixture(scope="module")
def replicas(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    tmp = tmp_path_factory.mktemp("replicas")
    prefix = f"rep{uuid.uuid4().hex[:8]}:"
    env = {"STEER_REDIS_URL": redis_url, "STEER_REDIS_PREFIX": prefix}
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(start_server, server_env(tmp / n, **env), tmp / f"{n}.log") for n in ("a", "b")]
        servers = [f.result() for f in futures]
    yield Replicas(*servers, redis_url, prefix)
    for server in servers:
        server.stop()


async def post_many(urls: list[str], body: dict[str, Any], per_url: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60) as client:
        return await asyncio.gather(*(client.post(f"{u}/v1/tasks", json=body) for u in urls for _ in range(per_url)))


def test_replicas_sharing_redis_compute_a_task_once(replicas: Replicas) -> None:
    body = task_body(ANTONYMS)
    responses = asyncio.run(post_many([replicas.a.url, replicas.b.url], body, per_url=6))
    assert all(r.status_code in (200, 202) for r in responses), [r.text for r in responses]
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 1
    task_id = ids.pop()
    with httpx.Client(base_url=replicas.a.url, timeout=60) as a, httpx.Client(base_url=replicas.b.url, timeout=60) as b:
        info = wait_task_sync(a, task_id)
        assert info["status"] == "ready"
        assert wait_task_sync(b, task_id) == info
        computations = [metric_of(s, "steer_vector_computations_total") for s in (replicas.a, replicas.b)]
        assert sum(computations) == 1, computations
        assert replicas.record(task_id)["attempts"] == 1

        # Either replica serves the vector; the one that did not compute it reads it from Redis once.
        reader = replicas.b if computations[0] == 1 else replicas.a
        request = {"prompt": "Q: hot\nA:", "max_new_tokens": 10, "steering": [{"task": task_id}]}
        texts = [c.post("/v1/generate", json=request).json()["text"] for c in (a, b, a, b)]
        assert len(set(texts)) == 1
        assert metric_of(reader, "steer_vector_cache_total", result="miss") == 1
        assert metric_of(reader, "steer_vector_cache_total", result="hit") == 1

        # Posting it again anywhere is answered from the store: ready, nothing recomputed.
        assert b.post("/v1/tasks", json=body).json() == {"id": task_id, "status": "ready"}
        assert a.post("/v1/tasks", json=body).status_code == 200
        assert sum(metric_of(s, "steer_vector_computations_total") for s in (replicas.a, replicas.b)) == 1

        # Deleted on one replica, gone on the other.
        assert a.delete(f"/v1/tasks/{task_id}").status_code == 204
        assert b.get(f"/v1/tasks/{task_id}").status_code == 404
        assert b.post("/v1/generate", json=request).status_code == 404


def test_a_replica_killed_mid_computation_leaves_nothing_stuck(replicas: Replicas) -> None:
    """Runs last in this module: it kills replica A."""
    body = {**SLOW_TASK, "options": {**SLOW_TASK["options"], "seed": 31}}
    with httpx.Client(base_url=replicas.a.url, timeout=60) as a, httpx.Client(base_url=replicas.b.url, timeout=60) as b:
        computed_by_b = metric_of(replicas.b, "steer_vector_computations_total")
        task_id = a.post("/v1/tasks", json=body).json()["id"]
        assert wait_task_sync(a, task_id, until=("running", "ready", "failed"))["status"] == "running"
        replicas.a.proc.kill()  # SIGKILL: no cleanup, the lock stays until it expires
        replicas.a.proc.wait(timeout=30)
        assert replicas.record(task_id)["status"] == "running"

        started = time.monotonic()
        info = wait_task_sync(b, task_id, timeout_s=120)  # asking B about it makes B take it over
        assert info["status"] == "ready", info
        assert time.monotonic() - started >= float(LOCK_TTL_S) / 2  # it waited for the dead holder's lock
        assert replicas.record(task_id)["attempts"] == 2
        assert metric_of(replicas.b, "steer_vector_computations_total") - computed_by_b == 1
        answer = b.post(
            "/v1/generate", json={"prompt": "Q: hot\nA:", "max_new_tokens": 4, "steering": [{"task": task_id}]}
        )
        assert answer.status_code == 200


def sqlite_record(data_dir: Path, task_id: str) -> dict[str, Any]:
    with sqlite3.connect(data_dir / SQLITE_FILENAME) as conn:
        row = conn.execute("SELECT data FROM tasks WHERE id = ?", (task_id,)).fetchone()
    assert row is not None
    return json.loads(row[0])


def test_restart_on_sqlite_keeps_tasks_and_finishes_an_interrupted_one(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    data_dir = tmp_path / "store"
    env = server_env(data_dir)
    first = server_factory(**env)
    request = {"prompt": "Q: Spain\nA:", "max_new_tokens": 8, "steering": [{"task": ""}]}
    with httpx.Client(base_url=first.url, timeout=60) as client:
        quick = client.post("/v1/tasks", json=task_body(CAPITALS)).json()["id"]
        quick_info = wait_task_sync(client, quick)
        assert quick_info["status"] == "ready"
        request["steering"] = [{"task": quick}]
        steered = client.post("/v1/generate", json=request).json()["text"]
        slow = client.post("/v1/tasks", json={**SLOW_TASK, "options": {**SLOW_TASK["options"], "seed": 41}}).json()
        assert wait_task_sync(client, slow["id"], until=("running", "ready", "failed"))["status"] == "running"
    first.proc.kill()
    first.proc.wait(timeout=30)
    assert sqlite_record(data_dir, slow["id"])["status"] == "running"

    second = server_factory(**env)
    with httpx.Client(base_url=second.url, timeout=60) as client:
        assert client.get(f"/v1/tasks/{quick}").json() == quick_info
        for _ in range(2):
            answer = client.post("/v1/generate", json=request)
            assert answer.status_code == 200 and answer.json()["text"] == steered
        assert metric_of(second, "steer_vector_cache_total", result="miss") == 1
        assert metric_of(second, "steer_vector_cache_total", result="hit") == 1
        # The interrupted task is taken up at start-up, once the dead process's lock has expired.
        info = wait_task_sync(client, slow["id"], timeout_s=120)
        assert info["status"] == "ready", info
        assert sqlite_record(data_dir, slow["id"])["attempts"] == 2
        assert metric_of(second, "steer_vector_computations_total") == 1
        listed = {t["id"] for t in client.get("/v1/tasks").json()["tasks"]}
        assert listed == {quick, slow["id"]}
