"""Bodies the server cannot read get a 400 that names the cause, and no error echoes a caller's long value whole."""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from tests.api_helpers import assert_error, running_app, settings

JSON = {"Content-Type": "application/json"}
LONG = "x" * 5_000


@pytest_asyncio.fixture(scope="module")
async def client(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(settings(tmp_path_factory.mktemp("request-errors"))) as (_, client):
        yield client


async def refused(client: httpx.AsyncClient, content: bytes, headers: dict[str, str]) -> str:
    response = await client.post("/v1/tasks", content=content, headers=headers)
    return assert_error(response, 400, "invalid_request")["message"]


async def test_a_compressed_body_is_refused_by_name(client: httpx.AsyncClient) -> None:
    body = gzip.compress(json.dumps({"demonstrations": []}).encode())
    message = await refused(client, body, {**JSON, "Content-Encoding": "gzip"})
    assert message == "request bodies must not be compressed (Content-Encoding 'gzip'): send them as they are"


async def test_a_body_that_is_not_utf8_says_where(client: httpx.AsyncClient) -> None:
    message = await refused(client, '{"name": "café"}'.encode("latin-1"), JSON)
    assert message == "the body is not valid UTF-8 (byte 0xe9 at position 13)"


async def test_another_charset_is_refused_by_name(client: httpx.AsyncClient) -> None:
    message = await refused(
        client, '{"name": "café"}'.encode("latin-1"), {"Content-Type": "application/json; charset=latin-1"}
    )
    assert message == "charset 'latin-1' is not supported; send UTF-8"
    # UTF-8 by name, and ASCII (which is UTF-8), are read as usual.
    for charset in ("utf-8", "UTF-8", "us-ascii"):
        response = await client.post(
            "/v1/tasks", content=b"{}", headers={"Content-Type": f"application/json; charset={charset}"}
        )
        assert_error(response, 422, "invalid_request")


async def test_json_nested_too_deeply_says_so(client: httpx.AsyncClient) -> None:
    message = await refused(client, b"[" * 100_000, JSON)
    assert message.startswith("the JSON is nested too deeply: the parser stops before "), message


async def test_errors_quote_a_long_value_by_its_prefix(client: httpx.AsyncClient) -> None:
    def quotes_a_prefix(error: dict[str, Any], value: str) -> None:
        assert len(json.dumps(error)) < 500, error
        assert f"'{value[:40]}'... ({len(value)} characters)" in error["message"], error

    task_id = "task-" + "0" * 195  # as long as a path's id may be
    quotes_a_prefix(assert_error(await client.get(f"/v1/tasks/{task_id}"), 404, "not_found"), task_id)
    generate = {"prompt": "hi", "max_new_tokens": 2, "steering": [{"task": task_id}]}
    quotes_a_prefix(assert_error(await client.post("/v1/generate", json=generate), 404, "not_found"), task_id)
    model = "m" * 1_000
    chat = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    quotes_a_prefix(assert_error(await client.post("/v1/chat/completions", json=chat), 404, "model_not_found"), model)
    # An unknown field's name, in the message and in `errors`.
    unknown_field = assert_error(await client.post("/v1/generate", json={"prompt": "hi", LONG: 1}), 422)
    assert len(json.dumps(unknown_field)) < 1_000, unknown_field
    assert f"{LONG[:40]}... (5000 characters)" in unknown_field["message"], unknown_field
