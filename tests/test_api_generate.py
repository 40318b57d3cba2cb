"""POST /v1/generate: prompt | input | messages, the invariants through HTTP, batching, the bounded
queue, server-sent events, and client disconnects (against a live uvicorn server)."""

from __future__ import annotations

import asyncio
import json
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

from steering.tasks.answer_end import AnswerEnd
from tests.api_helpers import (
    ANTONYMS,
    CAPITALS,
    LiveServer,
    assert_error,
    live_server,
    metric,
    running_app,
    services_of,
    settings,
    task_body,
    wait_task,
    wait_task_sync,
)

PROMPT = "Q: hot\nA:"


@dataclass
class Gen:
    app: FastAPI
    client: httpx.AsyncClient
    antonyms: str
    capitals: str

    async def generate(self, **body: Any) -> dict[str, Any]:
        response = await self.client.post("/v1/generate", json=body)
        assert response.status_code == 200, response.text
        return response.json()

    async def metrics(self) -> str:
        return (await self.client.get("/metrics")).text


@pytest_asyncio.fixture(scope="module")
async def gen(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gen]:
    # A generous batching window, so concurrent requests reliably share a batch.
    config = settings(tmp_path_factory.mktemp("generate"), batch_window_ms=60.0)
    async with running_app(config) as (app, client):
        ids = []
        for pairs in (ANTONYMS, CAPITALS):
            ids.append((await client.post("/v1/tasks", json=task_body(pairs))).json()["id"])
        for task_id in ids:
            assert (await wait_task(client, task_id))["status"] == "ready"
        yield Gen(app, client, *ids)


def reference_greedy(app: FastAPI, text: str, max_new_tokens: int) -> str:
    """What the plain model writes, by transformers' own generate: no steering code involved."""
    lm = services_of(app).lm
    ids = lm.tokenizer(text, return_tensors="pt")["input_ids"]
    with lm.lock, torch.inference_mode():
        out = lm.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=lm.tokenizer.pad_token_id,
        )
    return lm.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def no_hooks_left(app: FastAPI) -> bool:
    model = services_of(app).lm.model
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


async def test_prompt_input_and_messages(gen: Gen) -> None:
    tokenizer = services_of(gen.app).lm.tokenizer
    plain = await gen.generate(prompt=PROMPT, max_new_tokens=12)
    assert plain["finish_reason"] == "length"
    assert plain["usage"] == {
        "prompt_tokens": len(tokenizer(PROMPT)["input_ids"]),
        "completion_tokens": 12,
        "total_tokens": len(tokenizer(PROMPT)["input_ids"]) + 12,
    }
    assert plain["steering"] == []
    assert {"first_token_s", "total_s", "queue_s", "request_s"} <= set(plain["timing"])

    # `input` is rendered with the first task's query template and ends where the task's answers end:
    # the rule learned from its demonstrations (the task info shows it), applied to the free-running text.
    steering = [{"task": gen.antonyms}]
    info = (await gen.client.get(f"/v1/tasks/{gen.antonyms}")).json()
    rule = AnswerEnd.model_validate(info["answer_end"])
    assert "\n" in rule.stop and rule.max_words == 1
    by_input = await gen.generate(input="hot", steering=steering, max_new_tokens=24)
    limit = min(24, rule.max_tokens or 24)
    by_prompt = await gen.generate(prompt=PROMPT, steering=steering, max_new_tokens=limit, stop=[])
    assert by_input["text"] == rule.apply(by_prompt["text"]) and len(by_input["text"].split()) <= 1
    stopped = rule.cut(by_prompt["text"]) is not None
    assert by_input["finish_reason"] == ("stop" if stopped else by_prompt["finish_reason"])
    resolved = by_input["steering"][0]
    assert resolved == {"task": gen.antonyms, "strength": info["default_strength"], "layers": info["layers"]}

    # `messages` go through the model's chat template.
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hot"}]
    chat = await gen.generate(messages=messages, max_new_tokens=10)
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert chat["text"] == (await gen.generate(prompt=rendered, max_new_tokens=10))["text"]

    # A stop string ends the text before it.
    full = plain["text"]
    if len(full) > 4:
        stop = full[2:4]
        cut = await gen.generate(prompt=PROMPT, max_new_tokens=12, stop=stop)
        assert cut["finish_reason"] == "stop" and cut["text"] == full[: full.find(stop)]


async def test_strength_zero_equals_plain_model(gen: Gen) -> None:
    n = 16
    reference = reference_greedy(gen.app, PROMPT, n)
    plain = (await gen.generate(prompt=PROMPT, max_new_tokens=n))["text"]
    assert plain == reference
    for steering in (
        [{"task": gen.antonyms, "strength": 0}],
        [{"task": gen.antonyms, "strength": 0.0}, {"task": gen.capitals, "strength": 0}],
        [{"task": gen.capitals, "strength": 0, "layers": [0, 1]}],
    ):
        assert (await gen.generate(prompt=PROMPT, max_new_tokens=n, steering=steering))["text"] == reference
    steered = await gen.generate(prompt=PROMPT, max_new_tokens=n, steering=[{"task": gen.antonyms, "strength": 4}])
    assert steered["text"] != reference, "steering changes nothing: the test could not tell"
    assert no_hooks_left(gen.app)
    assert (await gen.generate(prompt=PROMPT, max_new_tokens=n))["text"] == reference


async def test_seeded_sampling_is_reproducible(gen: Gen) -> None:
    body = {"prompt": PROMPT, "max_new_tokens": 16, "temperature": 1.0, "top_p": 0.95}
    first = await gen.generate(**body, seed=1234)
    assert (await gen.generate(**body, seed=1234))["text"] == first["text"]
    others = {(await gen.generate(**body, seed=seed))["text"] for seed in range(4)}
    assert len(others | {first["text"]}) > 1, "different seeds should sample differently"
    steered = {**body, "seed": 99, "steering": [{"task": gen.capitals, "strength": 1.5}]}
    assert (await gen.generate(**steered))["text"] == (await gen.generate(**steered))["text"]


async def test_concurrent_requests_give_what_each_gives_alone(gen: Gen) -> None:
    a, c = gen.antonyms, gen.capitals
    bodies: list[dict[str, Any]] = [
        {"prompt": PROMPT, "max_new_tokens": 14},
        {"prompt": PROMPT, "max_new_tokens": 14, "steering": [{"task": a}]},
        {"prompt": PROMPT, "max_new_tokens": 14, "steering": [{"task": a, "strength": 3.0}]},
        {"prompt": "Q: France\nA:", "max_new_tokens": 9, "steering": [{"task": c, "strength": -2.0}]},
        {"prompt": "Q: up", "max_new_tokens": 20, "steering": [{"task": a, "strength": 0.5}, {"task": c}]},
        {"prompt": "the quick brown fox jumps over", "max_new_tokens": 11, "steering": [{"task": c, "layers": [1]}]},
        {"input": "big", "max_new_tokens": 16, "steering": [{"task": a, "strength": 2.0}]},
        {"prompt": "red", "max_new_tokens": 12, "temperature": 0.8, "seed": 5, "steering": [{"task": c}]},
    ]
    alone = [await gen.generate(**body) for body in bodies]
    text = await gen.metrics()
    batches_before = metric(text, "steer_batch_size_count")
    singles_before = metric(text, "steer_batch_size_bucket", le="1.0")

    together = await asyncio.gather(*(gen.client.post("/v1/generate", json=body) for body in bodies))
    assert all(r.status_code == 200 for r in together), [r.text for r in together]
    for body, one, batched in zip(bodies, alone, [r.json() for r in together], strict=True):
        assert batched["text"] == one["text"], body
        assert batched["finish_reason"] == one["finish_reason"], body
        assert batched["usage"] == one["usage"], body

    text = await gen.metrics()
    batches = metric(text, "steer_batch_size_count") - batches_before
    multi = batches - (metric(text, "steer_batch_size_bucket", le="1.0") - singles_before)
    assert multi >= 1, "no batch held more than one request"
    assert batches < len(bodies)
    assert no_hooks_left(gen.app)


async def test_stream_matches_the_plain_response(gen: Gen) -> None:
    body = {"prompt": PROMPT, "max_new_tokens": 20, "steering": [{"task": gen.antonyms}]}
    whole = await gen.generate(**body)
    response = await gen.client.post("/v1/generate", json={**body, "stream": True})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(response.text)
    tokens = [json.loads(data)["text"] for name, data in events if name == "token"]
    done = [json.loads(data) for name, data in events if name == "done"]
    assert len(done) == 1 and events[-1][0] == "done"
    assert "".join(tokens) == done[0]["text"] == whole["text"]
    assert done[0]["usage"] == whole["usage"] and done[0]["steering"] == whole["steering"]
    assert len(tokens) > 1


def parse_sse(text: str) -> list[tuple[str, str]]:
    """(event, data) pairs of a server-sent event stream; comments (pings) skipped."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
        if data:
            events.append((name, "\n".join(data)))
    return events


async def test_full_queue_answers_503_with_retry_after(tmp_path: Path) -> None:
    config = settings(tmp_path, max_queue=1, max_batch_size=1, batch_window_ms=0.0)
    async with running_app(config) as (app, client):
        body = {"prompt": PROMPT, "max_new_tokens": 200}
        responses = await asyncio.gather(*(client.post("/v1/generate", json=body) for _ in range(10)))
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {200, 503}, statuses
        assert statuses.count(200) >= 1 and statuses.count(503) >= 1, statuses
        for response in responses:
            if response.status_code == 503:
                assert_error(response, 503, "overloaded")
                assert int(response.headers["retry-after"]) >= 1
        # Once the queue drains, requests are served again.
        after = await client.post("/v1/generate", json={"prompt": PROMPT, "max_new_tokens": 4})
        assert after.status_code == 200, after.text
        assert no_hooks_left(app)


def generated_tokens(server: LiveServer) -> float:
    return metric(httpx.get(f"{server.url}/metrics").text, "steer_generated_tokens_total")


def test_client_disconnects_leak_no_work_and_no_hooks(tmp_path: Path) -> None:
    """Real HTTP: a client that drops a stream (or stops waiting) cancels its row; nothing stays attached."""
    with live_server(settings(tmp_path, max_new_tokens=500)) as server:
        client = httpx.Client(base_url=server.url, timeout=60)
        task_id = client.post("/v1/tasks", json=task_body(ANTONYMS)).json()["id"]
        assert wait_task_sync(client, task_id)["status"] == "ready"
        plain = client.post("/v1/generate", json={"prompt": PROMPT, "max_new_tokens": 24}).json()["text"]
        # On the tiny model this steered row runs for hundreds of tokens before it writes its end token.
        long_request = {"prompt": "down", "max_new_tokens": 500, "steering": [{"task": task_id, "strength": -1}]}
        full = client.post("/v1/generate", json=long_request).json()["usage"]["completion_tokens"]
        assert full >= 200, f"the long request wrote only {full} tokens: the test cannot tell a cancelled row"

        # Streaming: read a few events, then hang up.
        before = generated_tokens(server)
        with client.stream("POST", "/v1/generate", json={**long_request, "stream": True}) as response:
            assert response.status_code == 200
            seen = 0
            for line in response.iter_lines():
                seen += line.startswith("event: token")
                if seen >= 3:
                    break
        wait_until_idle(server)
        assert generated_tokens(server) - before < full / 2, "the dropped stream's row ran on"
        assert no_hooks_left(server.app)
        after = client.post("/v1/generate", json={"prompt": PROMPT, "max_new_tokens": 24})
        assert after.status_code == 200 and after.json()["text"] == plain

        # Not streaming: the client gives up waiting.
        before = generated_tokens(server)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{server.url}/v1/generate", json=long_request, timeout=httpx.Timeout(60, read=0.1))
        wait_until_idle(server)
        assert generated_tokens(server) - before < full / 2, "the abandoned request's row ran on"
        assert no_hooks_left(server.app)
        after = client.post("/v1/generate", json={"prompt": PROMPT, "max_new_tokens": 24})
        assert after.status_code == 200 and after.json()["text"] == plain
        client.close()


def wait_until_idle(server: LiveServer, timeout_s: float = 60.0) -> None:
    """Until the generation thread has no batch running (the model lock is free)."""
    lm = services_of(server.app).lm
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.2)
        if lm.lock.acquire(blocking=False):
            lm.lock.release()
            if metric(httpx.get(f"{server.url}/metrics").text, "steer_queue_depth") == 0:
                return
    raise AssertionError("generation did not go idle")
