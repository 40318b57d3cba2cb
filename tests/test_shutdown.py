"""SIGTERM on a replica that is generating and computing: running answers finish, queued ones get 503,
and the computation goes back to pending for the other replica, which finishes it with nobody asking."""

from __future__ import annotations

import json
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis

from tests.api_helpers import LONG_TASK
from tests.conftest import ServerProcess, start_server

GENERATIONS = 24


def env(data_dir: Path, redis_url: str, prefix: str) -> dict[str, str]:
    return {
        "STEER_MODEL": "tiny:llama",
        "STEER_DATA_DIR": str(data_dir),
        "STEER_REDIS_URL": redis_url,
        "STEER_REDIS_PREFIX": prefix,
        "STEER_API_KEYS": "",
        "STEER_LOCK_TTL_S": "3",
        "STEER_RECONCILE_INTERVAL_S": "0.5",
        "STEER_MAX_BATCH_SIZE": "1",  # a second generation waits in the queue behind the first
        "STEER_DRAIN_TIMEOUT_S": "30",
    }


def test_sigterm_drains_generations_and_hands_back_the_computation(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp = tmp_path_factory.mktemp("shutdown")
    prefix = f"term{uuid.uuid4().hex[:8]}:"
    store = redis.Redis.from_url(redis_url)
    with ThreadPoolExecutor(2) as pool:
        started = [pool.submit(start_server, env(tmp / n, redis_url, prefix), tmp / f"{n}.log") for n in "ab"]
        a, b = (f.result() for f in started)
    servers = {a.proc.pid: a, b.proc.pid: b}
    try:
        task_id = httpx.post(f"{a.url}/v1/tasks", json=LONG_TASK, timeout=30).json()["id"]
        holder = wait_for_lock(store, f"{prefix}lock:{task_id}")
        doomed: ServerProcess = servers[int(holder.split("-")[-2])]
        survivor = b if doomed is a else a
        record = wait_for_status(store, f"{prefix}task:{task_id}", "running")  # the lock is taken just before
        assert record["attempts"] == 1

        answer = {"prompt": "hello", "max_new_tokens": 300}
        alone = httpx.post(f"{doomed.url}/v1/generate", json=answer, timeout=60).json()["text"]
        with ThreadPoolExecutor(GENERATIONS) as pool:  # one runs at a time, the others wait in the queue
            calls = [
                pool.submit(httpx.post, f"{doomed.url}/v1/generate", json=answer, timeout=60)
                for _ in range(GENERATIONS)
            ]
            # Every request accepted first (answered, running or queued): a connection that the server has
            # not read a request from when it stops is closed, which is not what this test is about.
            wait_for_all_accepted(doomed.url, "/v1/generate", GENERATIONS + 1)
            doomed.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            responses = [c.result() for c in calls]
        finished = [r for r in responses if r.status_code == 200]
        refused = [r for r in responses if r.status_code == 503]
        assert len(finished) + len(refused) == len(responses), [r.text for r in responses]
        assert finished and refused, (len(finished), len(refused))
        assert all(r.json()["text"] == alone for r in finished)  # whatever ran, ran to its end
        assert all(r.json()["error"]["type"] == "shutting_down" and r.headers["retry-after"] for r in refused)
        assert doomed.proc.wait(timeout=40) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once drained
        assert time.monotonic() - signalled < 35

        # Handed back as pending (this attempt not counted), then adopted by the other replica.
        deadline = time.monotonic() + 180
        while (record := json.loads(store.get(f"{prefix}task:{task_id}")))["status"] not in ("ready", "failed"):
            assert time.monotonic() < deadline, record
            time.sleep(0.2)
        assert record["status"] == "ready" and record["attempts"] == 1, record
        assert store.get(f"{prefix}vec:{task_id}") is not None
        assert store.get(f"{prefix}lock:{task_id}") is None
        assert "stopped (shutdown)" in doomed.log() and "Application shutdown complete" in doomed.log()
        use = {"prompt": "Q: hot\nA:", "max_new_tokens": 3, "steering": [{"task": task_id}]}
        assert httpx.post(f"{survivor.url}/v1/generate", json=use, timeout=60).status_code == 200
    finally:
        for server in (a, b):
            server.stop()
        store.close()


def wait_for_status(store: redis.Redis, key: str, status: str, timeout_s: float = 30) -> dict:
    deadline = time.monotonic() + timeout_s
    while (record := json.loads(store.get(key)))["status"] != status:
        assert time.monotonic() < deadline, record
        time.sleep(0.05)
    return record


def wait_for_all_accepted(url: str, route: str, expected: int, timeout_s: float = 30) -> None:
    """Until answered + queued + the one running (max batch 1) generations reach `expected`."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = httpx.get(f"{url}/metrics", timeout=10).text
        answered = sum(_sample(text, "steer_http_requests_total", f'route="{route}"'))
        queued = sum(_sample(text, "steer_queue_depth"))
        if answered + queued + 1 >= expected:
            return
        assert time.monotonic() < deadline, (answered, queued)
        time.sleep(0.02)


def _sample(text: str, name: str, label: str = "") -> list[float]:
    return [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and (line[len(name)] in " {") and label in line
    ]


def wait_for_lock(store: redis.Redis, key: str, timeout_s: float = 30) -> str:
    deadline = time.monotonic() + timeout_s
    while (holder := store.get(key)) is None:
        assert time.monotonic() < deadline, f"nobody took {key}"
        time.sleep(0.05)
    return holder.decode()
