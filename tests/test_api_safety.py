"""API keys, task ownership and limits: clear 4xx JSON errors, never a 500, nothing stored by bad input."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from tests.api_helpers import (
    ANTONYMS,
    CAPITALS,
    FAILING_TASK,
    assert_error,
    live_server,
    running_app,
    services_of,
    settings,
    task_body,
    wait_task,
)

ALPHA = {"Authorization": "Bearer alpha-key"}
BETA = {"Authorization": "Bearer beta-key"}
LIMITS = {
    "max_demonstrations": 16,
    "max_demonstration_chars": 50,
    "max_prompt_tokens": 64,
    "max_new_tokens": 40,
    "max_steering_entries": 2,
    "max_strength": 5.0,
    "max_body_bytes": 20_000,
}


@dataclass
class Keyed:
    app: FastAPI
    client: httpx.AsyncClient
    task: str  # alpha's ready task
    failed: str  # alpha's failed task

    async def post(self, path: str, body: Any, headers: dict[str, str] = ALPHA) -> httpx.Response:
        # Encoded here: httpx refuses NaN and infinity, which Python's json (and so a careless client) writes.
        content = json.dumps(body).encode()
        return await self.client.post(path, content=content, headers={**headers, "Content-Type": "application/json"})

    async def snapshot(self) -> list[tuple[str, str, float]]:
        records = await services_of(self.app).store.list(all_owners=True)
        return [(r.id, r.status, r.updated_at) for r in records]


@pytest_asyncio.fixture(scope="module")
async def keyed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Keyed]:
    config = settings(tmp_path_factory.mktemp("safety"), api_keys="alpha-key, beta-key", **LIMITS)
    async with running_app(config) as (app, client):
        task = (await client.post("/v1/tasks", json=task_body(ANTONYMS), headers=ALPHA)).json()["id"]
        failed = (await client.post("/v1/tasks", json=FAILING_TASK, headers=ALPHA)).json()["id"]
        client.headers.update(ALPHA)
        assert (await wait_task(client, task))["status"] == "ready"
        assert (await wait_task(client, failed))["status"] == "failed"
        del client.headers["Authorization"]
        yield Keyed(app, client, task, failed)


def v1_routes(app: FastAPI) -> list[tuple[str, str]]:
    """Every /v1 operation the app declares (routes added later are covered too); path parameters filled in."""
    routes = []
    for path, operations in app.openapi()["paths"].items():
        if path.startswith("/v1"):
            concrete = re.sub(r"\{[^}]+\}", "task-x", path)
            routes.extend((method.upper(), concrete) for method in operations)
    return routes


async def test_every_v1_route_needs_a_key(keyed: Keyed) -> None:
    routes = v1_routes(keyed.app)
    assert {("POST", "/v1/tasks"), ("GET", "/v1/models"), ("POST", "/v1/chat/completions")} <= set(routes)
    bad_headers = [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "alpha-key"}, {"Authorization": "Bearer"}]
    for (method, path), headers in itertools.product(routes, bad_headers):
        response = await keyed.client.request(method, path, headers=headers, json={})
        assert_error(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await keyed.client.get(path)).status_code == 200
    assert (await keyed.client.get("/v1/models", headers=BETA)).status_code == 200


async def test_tasks_belong_to_the_key_that_registered_them(keyed: Keyed) -> None:
    before = await keyed.snapshot()
    path = f"/v1/tasks/{keyed.task}"
    assert (await keyed.client.get(path, headers=ALPHA)).status_code == 200
    assert_error(await keyed.client.get(path, headers=BETA), 404, "not_found")
    assert_error(await keyed.client.delete(path, headers=BETA), 404, "not_found")
    use = {"prompt": "Q: hot\nA:", "max_new_tokens": 4, "steering": [{"task": keyed.task}]}
    assert_error(await keyed.post("/v1/generate", use, BETA), 404, "not_found")
    assert (await keyed.post("/v1/generate", use)).status_code == 200
    openai_use = {"prompt": "Q: hot\nA:", "max_tokens": 4, "steering": [{"task": keyed.task}]}
    assert_error(await keyed.post("/v1/completions", openai_use, BETA), 404, "not_found")
    chat_use = {"messages": [{"role": "user", "content": "hot"}], "max_tokens": 4, "steering": [{"task": keyed.task}]}
    assert_error(await keyed.post("/v1/chat/completions", chat_use, BETA), 404, "not_found")
    assert (await keyed.client.get("/v1/tasks", headers=BETA)).json()["tasks"] == []
    assert await keyed.snapshot() == before  # beta's attempts changed nothing

    # The same demonstrations posted by beta are beta's own task, with another id.
    theirs = await keyed.post("/v1/tasks", task_body(ANTONYMS), BETA)
    assert theirs.status_code == 202 and theirs.json()["id"] != keyed.task
    beta_id = theirs.json()["id"]
    alpha_list = [t["id"] for t in (await keyed.client.get("/v1/tasks", headers=ALPHA)).json()["tasks"]]
    assert beta_id not in alpha_list and keyed.task in alpha_list
    assert_error(await keyed.client.get(f"/v1/tasks/{beta_id}", headers=ALPHA), 404, "not_found")
    assert (await keyed.client.delete(f"/v1/tasks/{beta_id}", headers=BETA)).status_code == 204


async def test_open_server_needs_no_key(tmp_path: Path) -> None:
    async with running_app(settings(tmp_path)) as (_, client):
        assert (await client.get("/v1/models")).status_code == 200
        assert (await client.get("/v1/tasks")).json()["tasks"] == []
        answer = await client.post("/v1/generate", json={"prompt": "hi", "max_new_tokens": 2})
        assert answer.status_code == 200
        # A key sent anyway is ignored.
        assert (await client.get("/v1/tasks", headers={"Authorization": "Bearer whatever"})).status_code == 200


def demos_of(n: int) -> list[dict[str, str]]:
    return [{"input": f"in{i}", "output": f"out{i}"} for i in range(n)]


BAD_TASKS: list[tuple[Any, int, str | None]] = [
    ({**task_body(), "demonstrations": demos_of(17)}, 422, "too_many_demonstrations"),
    ({**task_body(), "demonstrations": [{"input": "x" * 51, "output": "y"}]}, 422, "demonstration_too_long"),
    ({**task_body(), "demonstrations": [{"input": "x", "output": "y" * 51}]}, 422, "demonstration_too_long"),
    # 12 demonstrations within the character limit whose 10-shot prompts (about 1100 tokens) pass tiny:llama's 512
    (
        {**task_body(), "demonstrations": [{"input": "x" * 48 + f"{i:02}", "output": "y" * 50} for i in range(12)]},
        422,
        "demonstrations_exceed_context",
    ),
    ({**task_body(), "demonstrations": []}, 422, "invalid_request"),
    ({**task_body(), "demonstrations": [{"input": "x"}]}, 422, "invalid_request"),
    ({**task_body(), "demonstrations": [{"input": "x", "output": "y", "extra": 1}]}, 422, "invalid_request"),
    ({**task_body(), "demonstrations": "hot -> cold"}, 422, "invalid_request"),
    ({**task_body(), "method": "magic"}, 422, "invalid_request"),
    ({**task_body(), "method": None}, 422, "invalid_request"),
    ({**task_body(), "options": {"no_such_option": 1}}, 422, "invalid_options"),
    ({**task_body(), "options": {"k_shot": 0}}, 422, "invalid_options"),
    ({**task_body(), "options": {"num_prompts": "many"}}, 422, "invalid_options"),
    ({**task_body(), "options": {"layer": 99}}, 422, "invalid_options"),
    ({**task_body(), "options": {"layer": -1}}, 422, "invalid_options"),
    ({**task_body(), "options": []}, 422, "invalid_request"),
    ({**task_body(), "template": {"example": "{input}", "query": "{input}"}}, 422, "invalid_request"),
    ({**task_body(), "template": {"example": "{input} {output}", "query": "no placeholder"}}, 422, "invalid_request"),
    ({**task_body(), "template": {"example": "{input} {output}", "query": "{input}", "x": 1}}, 422, "invalid_request"),
    ({**task_body(), "template": "Q: {input}"}, 422, "invalid_request"),
    ({**task_body(), "name": "n" * 201}, 422, "invalid_name"),
    ({**task_body(), "name": "task-0123"}, 422, "invalid_name"),
    ({**task_body(), "unexpected": True}, 422, "invalid_request"),
    ([task_body()], 422, "invalid_request"),
    ("a string", 422, "invalid_request"),
    (None, 422, "invalid_request"),
    ({}, 422, "invalid_request"),
]


async def test_bad_tasks_are_refused_and_store_nothing(keyed: Keyed) -> None:
    before = await keyed.snapshot()
    listed = (await keyed.client.get("/v1/tasks", headers=ALPHA)).json()
    for body, status, type_ in BAD_TASKS:
        response = await keyed.post("/v1/tasks", body)
        assert_error(response, status, type_)
    for raw in (b"{not json", b"", b"\xff\xfe", b'{"demonstrations": [{"input": "a", "output": "b"}]'):
        response = await keyed.client.post(
            "/v1/tasks", content=raw, headers={**ALPHA, "Content-Type": "application/json"}
        )
        assert response.status_code in (400, 422), response.text
        assert_error(response, response.status_code)
    assert await keyed.snapshot() == before
    assert (await keyed.client.get("/v1/tasks", headers=ALPHA)).json() == listed


def bad_generations(task: str, failed: str) -> list[tuple[str, dict[str, Any], int, str | None]]:
    ok = {"prompt": "Q: hot\nA:", "max_new_tokens": 4}
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    return [
        ("/v1/generate", {**ok, "prompt": "hot " * 200}, 422, "prompt_too_long"),
        ("/v1/generate", {**ok, "prompt": ""}, 422, "empty_prompt"),
        ("/v1/generate", {**ok, "max_new_tokens": 41}, 422, "max_new_tokens_too_large"),
        ("/v1/generate", {**ok, "max_new_tokens": 0}, 422, "invalid_request"),
        ("/v1/generate", {**ok, "steering": [{"task": task}] * 3}, 422, "too_many_steering_entries"),
        ("/v1/generate", {**ok, "steering": [{"task": task, "strength": 5.5}]}, 422, "strength_out_of_range"),
        ("/v1/generate", {**ok, "steering": [{"task": task, "strength": -6}]}, 422, "strength_out_of_range"),
        ("/v1/generate", {**ok, "steering": [{"task": task, "strength": math.nan}]}, 422, None),
        ("/v1/generate", {**ok, "steering": [{"task": task, "strength": math.inf}]}, 422, None),
        ("/v1/generate", {**ok, "steering": [{"task": task, "layers": [2]}]}, 422, "invalid_layers"),
        ("/v1/generate", {**ok, "steering": [{"task": task, "layers": [-1]}]}, 422, "invalid_layers"),
        ("/v1/generate", {**ok, "steering": [{"task": task, "layers": []}]}, 422, "invalid_layers"),
        ("/v1/generate", {**ok, "steering": [{"task": task, "bogus": 1}]}, 422, "invalid_request"),
        ("/v1/generate", {**ok, "steering": [{"strength": 1}]}, 422, "invalid_request"),
        ("/v1/generate", {**ok, "steering": {"task": task}}, 422, "invalid_request"),
        ("/v1/generate", {**ok, "steering": [{"task": "task-unknown"}]}, 404, "not_found"),
        ("/v1/generate", {**ok, "steering": [{"task": failed}]}, 409, "task_not_ready"),
        ("/v1/generate", {**ok, "input": "hot"}, 422, "invalid_request"),
        ("/v1/generate", {"max_new_tokens": 4}, 422, "invalid_request"),
        ("/v1/generate", {**ok, "temperature": -1}, 422, "invalid_request"),
        ("/v1/generate", {**ok, "temperature": 100}, 422, "invalid_request"),
        ("/v1/generate", {**ok, "top_p": 0}, 422, "invalid_request"),
        ("/v1/generate", {**ok, "stop": [""]}, 422, "invalid_stop"),
        ("/v1/generate", {**ok, "stop": ["a"] * 9}, 422, "invalid_stop"),
        ("/v1/generate", {**ok, "messages": [{"role": "user"}], "prompt": None}, 422, "invalid_request"),
        ("/v1/generate", {**ok, "seed": "x"}, 422, "invalid_request"),
        ("/v1/generate", {**ok, "stream": "maybe"}, 422, "invalid_request"),
        ("/v1/completions", {"prompt": "hi", "max_tokens": 41}, 422, "max_new_tokens_too_large"),
        ("/v1/completions", {"prompt": ["a", "b"], "max_tokens": 4}, 422, "invalid_request"),
        ("/v1/completions", {"prompt": "hi", "n": 2}, 422, "unsupported_parameter"),
        ("/v1/completions", {"prompt": "hi", "best_of": 2}, 422, "unsupported_parameter"),
        ("/v1/completions", {"prompt": "hi", "model": "gpt-4"}, 404, "model_not_found"),
        ("/v1/completions", {"prompt": "hi", "steering": [{"task": "task-unknown"}]}, 404, "not_found"),
        ("/v1/completions", {"max_tokens": 4}, 422, "invalid_request"),
        ("/v1/chat/completions", {**chat, "logprobs": True}, 422, "unsupported_parameter"),
        ("/v1/chat/completions", {**chat, "messages": []}, 422, "invalid_request"),
        ("/v1/chat/completions", {**chat, "messages": [{"role": "wizard", "content": "x"}]}, 422, "invalid_request"),
        ("/v1/chat/completions", {**chat, "steering": [{"task": task, "strength": 99}]}, 422, None),
    ]


async def test_bad_generations_are_refused_with_clear_errors(keyed: Keyed) -> None:
    before = await keyed.snapshot()
    for path, body, status, type_ in bad_generations(keyed.task, keyed.failed):
        response = await keyed.post(path, body)
        try:
            assert_error(response, status, type_)
        except AssertionError as exc:
            raise AssertionError(f"{path} {body!r}: {exc}") from None
    assert await keyed.snapshot() == before
    # And the server still answers good requests; an OpenAI request without max_tokens stays within the limit.
    good = {"prompt": "Q: hot\nA:", "max_new_tokens": 4, "steering": [{"task": keyed.task}]}
    assert (await keyed.post("/v1/generate", good)).status_code == 200
    unbounded = await keyed.post("/v1/completions", {"prompt": "Q: hot\nA:", "temperature": 0})
    assert unbounded.status_code == 200, unbounded.text
    assert unbounded.json()["usage"]["completion_tokens"] <= LIMITS["max_new_tokens"]


async def test_entries_of_one_task_add_up_within_the_strength_limit(keyed: Keyed) -> None:
    """Entries naming the same task act as one of their summed |strength|: together within max_strength (5 here),
    on the native route and the OpenAI ones alike."""
    routes = {
        "/v1/generate": {"prompt": "Q: hot\nA:", "max_new_tokens": 2},
        "/v1/completions": {"prompt": "Q: hot\nA:", "max_tokens": 2},
        "/v1/chat/completions": {"messages": [{"role": "user", "content": "hot"}], "max_tokens": 2},
    }
    before = await keyed.snapshot()
    for path, body in routes.items():
        for strengths in ([3.0, 3.0], [3.0, -3.0]):
            steering = [{"task": keyed.task, "strength": s} for s in strengths]
            error = assert_error(await keyed.post(path, {**body, "steering": steering}), 422, "strength_out_of_range")
            assert keyed.task in error["message"] and "add up to 6" in error["message"], (path, error)
        within = await keyed.post(path, {**body, "steering": [{"task": keyed.task, "strength": 2.5}] * 2})
        assert within.status_code == 200, (path, within.text)
    assert await keyed.snapshot() == before


async def test_garbage_in_any_field_never_gives_500(keyed: Keyed) -> None:
    before = await keyed.snapshot()
    garbage = [None, "", "\x00", -1, 0, 10**30, 1.5, math.inf, True, [], {}, [None], {"a": 1}, "x" * 3000]
    templates = {
        "/v1/tasks": task_body(CAPITALS),
        "/v1/generate": {"prompt": "hi", "max_new_tokens": 2, "steering": [{"task": keyed.task}]},
        "/v1/completions": {"prompt": "hi", "max_tokens": 2, "steering": [{"task": keyed.task}]},
        "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    }
    for path, body in templates.items():
        for field, value in itertools.product(body, garbage):
            if path == "/v1/tasks" and field == "demonstrations" and isinstance(value, list) and not value:
                continue
            response = await keyed.post(path, {**body, field: value})
            assert response.status_code < 500, (path, field, value, response.text)
            if response.status_code >= 400:
                assert_error(response, response.status_code)
            elif path == "/v1/tasks":  # accepted: something valid after all; take it away again
                await keyed.client.delete(f"/v1/tasks/{response.json()['id']}", headers=ALPHA)
        steering_entry = templates["/v1/generate"]["steering"][0]
        for field, value in itertools.product([*steering_entry, "layers"], garbage):
            response = await keyed.post(
                "/v1/generate", {**templates["/v1/generate"], "steering": [{**steering_entry, field: value}]}
            )
            assert response.status_code < 500, (field, value, response.text)
    after = await keyed.snapshot()
    assert [r for r in after if r[0] in {b[0] for b in before}] == before


async def test_past_the_context_window_is_a_422_and_spoils_no_batch(tmp_path: Path) -> None:
    """tiny:gpt2 has 512 learned positions: a request past them must not fail the batch it would share."""
    async with running_app(settings(tmp_path, model="tiny:gpt2", batch_window_ms=50.0)) as (_, client):
        too_long = {"prompt": "hot " * 300, "max_new_tokens": 400}
        fine = {"prompt": "Q: hot\nA:", "max_new_tokens": 4}
        alone = await client.post("/v1/generate", json=fine)
        bad, good = await asyncio.gather(
            client.post("/v1/generate", json=too_long), client.post("/v1/generate", json=fine)
        )
        assert_error(bad, 422, "context_length_exceeded")
        assert good.status_code == 200 and good.json()["text"] == alone.json()["text"]
        openai_too_long = {"prompt": too_long["prompt"], "max_tokens": 400}
        assert_error(await client.post("/v1/completions", json=openai_too_long), 422, "context_length_exceeded")


async def test_body_size_limit(keyed: Keyed) -> None:
    before = await keyed.snapshot()
    big = {**task_body(), "name": "x" * 30_000}
    declared = await keyed.post("/v1/tasks", big)  # sent with Content-Length
    assert declared.request.headers.get("content-length")
    assert_error(declared, 413, "body_too_large")

    async def chunks():
        for _ in range(30):
            yield b" " * 1000
        yield b"{}"

    chunked = await keyed.client.post(
        "/v1/generate", content=chunks(), headers={**ALPHA, "Content-Type": "application/json"}
    )
    assert "content-length" not in chunked.request.headers
    assert_error(chunked, 413, "body_too_large")
    assert await keyed.snapshot() == before


def test_body_size_limit_over_real_http(tmp_path: Path) -> None:
    """The same limit through uvicorn, with a real chunked transfer encoding."""
    with live_server(settings(tmp_path, max_body_bytes=5_000)) as server:

        def chunks():
            for _ in range(20):
                yield b" " * 1000
            yield b"{}"

        headers = {"Content-Type": "application/json"}
        for content in (chunks(), b" " * 20_000 + b"{}"):
            response = httpx.post(f"{server.url}/v1/tasks", content=content, headers=headers, timeout=30)
            assert_error(response, 413, "body_too_large")
        chunked = httpx.post(f"{server.url}/v1/tasks", content=chunks(), headers=headers, timeout=30)
        assert chunked.request.headers.get("transfer-encoding") == "chunked"
        assert_error(chunked, 413, "body_too_large")
        ok = httpx.post(f"{server.url}/v1/generate", json={"prompt": "hi", "max_new_tokens": 2}, timeout=30)
        assert ok.status_code == 200
        assert httpx.get(f"{server.url}/v1/tasks", timeout=30).json()["tasks"] == []


async def test_names_are_per_key(keyed: Keyed) -> None:
    """A name is looked up within the caller's key only: the same name in two keys is two tasks."""
    named = await keyed.client.patch(f"/v1/tasks/{keyed.task}", json={"name": "mine"}, headers=ALPHA)
    assert named.status_code == 200 and named.json()["name"] == "mine"
    assert_error(await keyed.client.get("/v1/tasks/mine", headers=BETA), 404, "not_found")
    assert_error(await keyed.client.patch("/v1/tasks/mine", json={"name": "x"}, headers=BETA), 404, "not_found")
    assert_error(await keyed.client.delete("/v1/tasks/mine", headers=BETA), 404, "not_found")
    use = {"prompt": "Q: hot\nA:", "max_new_tokens": 4, "steering": [{"task": "mine"}]}
    assert_error(await keyed.post("/v1/generate", use, BETA), 404, "not_found")
    assert (await keyed.post("/v1/generate", use)).status_code == 200

    theirs = await keyed.post("/v1/tasks", task_body(CAPITALS, name="mine"), BETA)  # free in beta's key
    assert theirs.status_code == 202 and theirs.json()["name"] == "mine"
    assert (await keyed.client.get("/v1/tasks/mine", headers=BETA)).json()["id"] == theirs.json()["id"]
    assert (await keyed.client.get("/v1/tasks/mine", headers=ALPHA)).json()["id"] == keyed.task
    assert (await keyed.client.delete("/v1/tasks/mine", headers=BETA)).status_code == 204
    assert (await keyed.client.get("/v1/tasks/mine", headers=ALPHA)).json()["id"] == keyed.task
    restored = await keyed.client.patch(f"/v1/tasks/{keyed.task}", json={"name": None}, headers=ALPHA)
    assert restored.status_code == 200 and restored.json()["name"] is None


async def test_a_huge_prompt_is_tokenized_without_stalling_other_requests(tmp_path: Path) -> None:
    """A prompt as large as the body limit takes the tokenizer a second or more; that must not hold the event
    loop (every other request, /healthz included, would wait behind it)."""
    huge = {"prompt": "hot and cold, big and small. " * 34_000, "max_new_tokens": 2}  # about 1 MB
    async with running_app(settings(tmp_path, max_body_bytes=2_000_000)) as (_, client):
        started = asyncio.get_running_loop().time()
        assert_error(await client.post("/v1/generate", json=huge), 422, "prompt_too_long")
        tokenizing_s = asyncio.get_running_loop().time() - started
        work = asyncio.gather(*(client.post("/v1/generate", json=huge) for _ in range(3)))
        slowest = 0.0  # the longest the loop took to answer /healthz and come back from a 10 ms sleep
        while not work.done():
            start = asyncio.get_running_loop().time()
            assert (await client.get("/healthz")).status_code == 200
            await asyncio.sleep(0.01)  # in-process, the GET itself never lets another task run
            slowest = max(slowest, asyncio.get_running_loop().time() - start - 0.01)
        for response in await work:
            assert_error(response, 422, "prompt_too_long")
    assert slowest < tokenizing_s / 2, (slowest, tokenizing_s)
