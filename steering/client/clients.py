"""`Client` and `AsyncClient`: the sync and the async face of the same operations (`operations.py`).

Each method builds its operation and hands it to its transport; only streaming, which reads a response
line by line, has a loop of its own on each side.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx

from steering.client import operations as ops
from steering.client.bodies import DemoLike, SteeringLike, VectorFormat, generate_body
from steering.client.errors import api_error, check
from steering.client.operations import Call, Operation, ProgressCallback
from steering.client.sse import StreamDecoder
from steering.protocol import ChatMessage, GenerateResponse, TaskInfo, Template

DEFAULT_URL = "http://127.0.0.1:8000"
T = TypeVar("T")


def _headers(api_key: str | None) -> dict[str, str]:
    headers = {"Accept": "application/json", "User-Agent": "steering-client/0.1"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def _settings(base_url: str | None, api_key: str | None) -> tuple[str, str | None]:
    url = base_url or os.environ.get("STEER_URL") or DEFAULT_URL
    return url.rstrip("/"), api_key if api_key is not None else os.environ.get("STEER_API_KEY") or None


class Client:
    """A synchronous client. `base_url` and `api_key` default to $STEER_URL and $STEER_API_KEY."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 120.0,
        http: httpx.Client | None = None,
    ) -> None:
        self.base_url, self.api_key = _settings(base_url, api_key)
        self._http = http or httpx.Client(base_url=self.base_url, headers=_headers(self.api_key), timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: Call) -> httpx.Response:
        return check(self._http.request(call.method, call.path, **call.kwargs()))

    def _run(self, operation: Operation[T]) -> T:
        return ops.run(operation, self._send)

    # server
    def ready(self) -> dict[str, Any]:
        """GET /readyz: model name, fingerprint and store state (raises Overloaded while unready)."""
        return self._run(ops.ready())

    # tasks
    def register(
        self,
        demos: str | Path | Iterable[DemoLike],
        method: str = "auto",
        name: str | None = None,
        template: Template | Mapping[str, str] | None = None,
        options: Mapping[str, Any] | None = None,
        *,
        wait: bool = False,
        timeout: float | None = None,
        poll_interval: float = 0.5,
        on_progress: ProgressCallback | None = None,
    ) -> TaskInfo:
        """Register a task; with `wait`, block until it is ready (TaskFailed / WaitTimeout otherwise)."""
        waiting = {"wait": wait, "timeout": timeout, "poll_interval": poll_interval, "on_progress": on_progress}
        return self._run(ops.register(demos, method, name, template, options, **waiting))

    def wait(
        self,
        task_id: str,
        *,
        timeout: float | None = None,
        poll_interval: float = 0.5,
        on_progress: ProgressCallback | None = None,
    ) -> TaskInfo:
        """Poll the task until it is ready; raises TaskFailed if it fails, WaitTimeout after `timeout` s."""
        return self._run(ops.wait_ready(task_id, timeout, poll_interval, on_progress))

    def get(self, task_id: str) -> TaskInfo:
        return self._run(ops.get(task_id))

    def list(self) -> list[TaskInfo]:
        """Every task of this key, newest first (the server answers in pages; this follows them all)."""
        return self._run(ops.list_tasks())

    def delete(self, task_id: str) -> None:
        self._run(ops.delete(task_id))

    # generation
    def generate(
        self,
        prompt: str | None = None,
        *,
        input: str | None = None,
        messages: Sequence[ChatMessage | Mapping[str, str]] | None = None,
        steering: Iterable[SteeringLike] | SteeringLike | None = None,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: list[str] | str | None = None,
    ) -> GenerateResponse:
        """POST /v1/generate: give one of `prompt` (as is), `input` (in the first task's template) or `messages`."""
        sampling = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "seed": seed}
        body = generate_body(prompt, input, messages, steering, False, stop=stop, **sampling)
        return self._run(ops.generate(body))

    def stream_generate(
        self,
        prompt: str | None = None,
        *,
        input: str | None = None,
        messages: Sequence[ChatMessage | Mapping[str, str]] | None = None,
        steering: Iterable[SteeringLike] | SteeringLike | None = None,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: list[str] | str | None = None,
        on_done: Callable[[GenerateResponse], None] | None = None,
    ) -> Iterator[str]:
        """Like `generate`, streamed: yields text pieces; the final response goes to `on_done`."""
        sampling = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "seed": seed}
        call = ops.stream_call(generate_body(prompt, input, messages, steering, True, stop=stop, **sampling))
        decoder = StreamDecoder(on_done)
        with self._http.stream(call.method, call.path, **call.kwargs()) as resp:
            if resp.status_code >= 400:
                resp.read()
                raise api_error(resp)
            for line in resp.iter_lines():
                if piece := decoder.feed(line):
                    yield piece

    # vectors
    def export_vector(
        self,
        task_id: str,
        format: VectorFormat = "safetensors",
        path: str | Path | None = None,
        *,
        drop_layer_zero: bool = False,
    ) -> bytes:
        """The task's vector as safetensors (any method) or a GGUF control vector; also written to `path`."""
        return self._run(ops.export_vector(task_id, format, path, drop_layer_zero))

    def import_vector(
        self, source: bytes | str | Path, format: VectorFormat | None = None, name: str | None = None
    ) -> TaskInfo:
        """Create a ready task from a vector file (path or bytes); the format is guessed if not given."""
        return self._run(ops.import_vector(source, format, name))


class AsyncClient:
    """The asynchronous twin of `Client`: the same methods, awaited (`stream_generate` is an async iterator)."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 120.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url, self.api_key = _settings(base_url, api_key)
        self._http = http or httpx.AsyncClient(base_url=self.base_url, headers=_headers(self.api_key), timeout=timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def _send(self, call: Call) -> httpx.Response:
        return check(await self._http.request(call.method, call.path, **call.kwargs()))

    async def _run(self, operation: Operation[T]) -> T:
        return await ops.run_async(operation, self._send)

    async def ready(self) -> dict[str, Any]:
        return await self._run(ops.ready())

    async def register(
        self,
        demos: str | Path | Iterable[DemoLike],
        method: str = "auto",
        name: str | None = None,
        template: Template | Mapping[str, str] | None = None,
        options: Mapping[str, Any] | None = None,
        *,
        wait: bool = False,
        timeout: float | None = None,
        poll_interval: float = 0.5,
        on_progress: ProgressCallback | None = None,
    ) -> TaskInfo:
        waiting = {"wait": wait, "timeout": timeout, "poll_interval": poll_interval, "on_progress": on_progress}
        return await self._run(ops.register(demos, method, name, template, options, **waiting))

    async def wait(
        self,
        task_id: str,
        *,
        timeout: float | None = None,
        poll_interval: float = 0.5,
        on_progress: ProgressCallback | None = None,
    ) -> TaskInfo:
        return await self._run(ops.wait_ready(task_id, timeout, poll_interval, on_progress))

    async def get(self, task_id: str) -> TaskInfo:
        return await self._run(ops.get(task_id))

    async def list(self) -> list[TaskInfo]:
        """Every task of this key, newest first (the server answers in pages; this follows them all)."""
        return await self._run(ops.list_tasks())

    async def delete(self, task_id: str) -> None:
        await self._run(ops.delete(task_id))

    async def generate(
        self,
        prompt: str | None = None,
        *,
        input: str | None = None,
        messages: Sequence[ChatMessage | Mapping[str, str]] | None = None,
        steering: Iterable[SteeringLike] | SteeringLike | None = None,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: list[str] | str | None = None,
    ) -> GenerateResponse:
        sampling = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "seed": seed}
        body = generate_body(prompt, input, messages, steering, False, stop=stop, **sampling)
        return await self._run(ops.generate(body))

    async def stream_generate(
        self,
        prompt: str | None = None,
        *,
        input: str | None = None,
        messages: Sequence[ChatMessage | Mapping[str, str]] | None = None,
        steering: Iterable[SteeringLike] | SteeringLike | None = None,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: list[str] | str | None = None,
        on_done: Callable[[GenerateResponse], None] | None = None,
    ) -> AsyncIterator[str]:
        sampling = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "seed": seed}
        call = ops.stream_call(generate_body(prompt, input, messages, steering, True, stop=stop, **sampling))
        decoder = StreamDecoder(on_done)
        async with self._http.stream(call.method, call.path, **call.kwargs()) as resp:
            if resp.status_code >= 400:
                await resp.aread()
                raise api_error(resp)
            async for line in resp.aiter_lines():
                if piece := decoder.feed(line):
                    yield piece

    async def export_vector(
        self,
        task_id: str,
        format: VectorFormat = "safetensors",
        path: str | Path | None = None,
        *,
        drop_layer_zero: bool = False,
    ) -> bytes:
        return await self._run(ops.export_vector(task_id, format, path, drop_layer_zero))

    async def import_vector(
        self, source: bytes | str | Path, format: VectorFormat | None = None, name: str | None = None
    ) -> TaskInfo:
        return await self._run(ops.import_vector(source, format, name))
