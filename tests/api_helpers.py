"""Helpers for the service tests: an in-process app with its lifespan, a live uvicorn thread, metrics, polling."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from app.main import create_app
from app.services import Services
from app.settings import Settings
from tests.store_fixtures import free_port

OCTET = {"Content-Type": "application/octet-stream"}  # a vector file posted to /v1/tasks/import
ANTONYMS = [
    ("hot", "cold"),
    ("big", "small"),
    ("up", "down"),
    ("fast", "slow"),
    ("light", "dark"),
    ("open", "closed"),
    ("good", "bad"),
    ("early", "late"),
    ("yes", "no"),
    ("happy", "sad"),
]
CAPITALS = [
    ("France", "Paris"),
    ("Spain", "Madrid"),
    ("Italy", "Rome"),
    ("Japan", "Tokyo"),
    ("Egypt", "Cairo"),
    ("one", "two"),
    ("three", "four"),
    ("red", "green"),
]


def demos(pairs: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"input": a, "output": b} for a, b in pairs]


def task_body(pairs: list[tuple[str, str]] = ANTONYMS, method: str = "task_vector", **extra: Any) -> dict[str, Any]:
    return {"demonstrations": demos(pairs), "method": method, **extra}


# A template and demonstrations that pass validation but cannot be computed: every zero-shot query
# renders to the empty string, which tokenizes to no tokens at all.
FAILING_TASK: dict[str, Any] = {
    "demonstrations": [{"input": "", "output": "x"}, {"input": "", "output": "y"}, {"input": "", "output": "z"}],
    "method": "task_vector",
    "template": {"example": "{input}{output}", "query": "{input}", "separator": ""},
}

# Many long few-shot prompts: seconds of computation on the tiny model, enough to watch it run.
SLOW_TASK: dict[str, Any] = task_body(ANTONYMS + CAPITALS, options={"num_prompts": 160, "k_shot": 8})
# Thousands of gate-training steps that never stop early: tens of seconds, for what must happen while one runs.
LONG_TASK: dict[str, Any] = task_body(
    ANTONYMS + CAPITALS, method="soft_injection", options={"steps": 5000, "patience": 1000, "seed": 5}
)


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels` (0.0 when there are none)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def services_of(app: FastAPI) -> Services:
    return app.state.services


def assert_error(response: httpx.Response, status: int, type_: str | None = None) -> dict[str, Any]:
    """The response is the service's JSON error shape with this status (and type)."""
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error.get("type"), str) and error["type"], body
    assert isinstance(error.get("message"), str) and error["message"], body
    if type_ is not None:
        assert error["type"] == type_, body
    return error


async def wait_task(
    client: httpx.AsyncClient, task_id: str, until: tuple[str, ...] = ("ready", "failed"), timeout_s: float = 60.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        response = await client.get(f"/v1/tasks/{task_id}")
        assert response.status_code == 200, response.text
        info = response.json()
        if info["status"] in until:
            return info
        assert time.monotonic() < deadline, f"task {task_id} still {info['status']} after {timeout_s} s"
        await asyncio.sleep(0.02)


def wait_task_sync(
    client: httpx.Client, task_id: str, until: tuple[str, ...] = ("ready", "failed"), timeout_s: float = 60.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        response = client.get(f"/v1/tasks/{task_id}")
        assert response.status_code == 200, response.text
        info = response.json()
        if info["status"] in until:
            return info
        assert time.monotonic() < deadline, f"task {task_id} still {info['status']} after {timeout_s} s"
        time.sleep(0.05)


def settings(tmp_path, **overrides: Any) -> Settings:
    """Settings for a test app on the tiny model; nothing read from a developer's environment matters."""
    values: dict[str, Any] = {"model": "tiny:llama", "data_dir": tmp_path, "api_keys": "", "redis_url": None}
    values.update(overrides)
    return Settings(**values)


@asynccontextmanager
async def running_app(config: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The app with its lifespan run (model loaded, store open, batcher started) and an ASGI client."""
    app = create_app(config)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=120) as client:
            yield app, client


class LiveServer:
    """The app served by uvicorn on a real socket from a thread of this process (real HTTP, fast start)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="live-server", daemon=True)

    def start(self, timeout_s: float = 60.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            assert self.thread.is_alive(), "the live server stopped while starting"
            assert time.monotonic() < deadline, "the live server did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@contextmanager
def live_server(config: Settings) -> Iterator[LiveServer]:
    server = LiveServer(create_app(config))
    server.start()
    try:
        yield server
    finally:
        server.stop()
