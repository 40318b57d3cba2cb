"""`Client` and `AsyncClient`: the sync and the async face of the same operations (`operations.py`).

Every call is written once, in `_Calls`: it builds its operation and hands it to the face's `_run`, which
drives it over `httpx.Client` (returning the result) or `httpx.AsyncClient` (returning an awaitable of it).
Only streaming, which reads a response line by line, has a loop of its own on each face.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import httpx

from steering.client import operations as ops
from steering.client.bodies import DemoLike, SteeringLike, VectorFormat, generate_body
from steering.client.errors import api_error, check
from steering.client.operations import Call, Operation, ProgressCallback
from steering.client.sse import StreamDecoder
from steering.wire.protocol import ChatMessage, GenerateResponse, TaskInfo, Template

DEFAULT_URL = "http://127.0.0.1:8000"
T = TypeVar("T")
Result = T | Awaitable[T]  # what a call returns: T from `Client`, an awaitable of T from `AsyncClient`
Body = Callable[[], dict[str, Any]]


def _headers(api_key: str | None) -> dict[str, str]:
    headers = {"Accept": "application/json", "User-Agent": "steering-client/0.1"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def _settings(base_url: str | None, api_key: str | None) -> tuple[str, str | None]:
    url = base_url or os.environ.get("STEER_URL") or DEFAULT_URL
    return url.rstrip("/"), api_key if api_key is not None else os.environ.get("STEER_API_KEY") or None


class _Calls:
    """Every call of the API, once; a face supplies the transport (`_run`, `_stream`)."""

    _http_class: ClassVar[type[httpx.Client] | type[httpx.AsyncClient]]

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 120.0,
        http: httpx.Client | httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url, self.api_key = _settings(base_url, api_key)
        self._http = http or self._http_class(base_url=self.base_url, headers=_headers(self.api_key), timeout=timeout)

    def _run(self, operation: Operation[T]) -> Result[T]:
        raise NotImplementedError

    def _stream(self, body: Body, on_done: Callable[[GenerateResponse], None] | None) -> Any:
        raise NotImplementedError

    # server
    def ready(self) -> Result[dict[str, Any]]:
        """GET /readyz: model name, fingerprint and store state (raises Overloaded while unready)."""
        return self._run(ops.ready())

    # tasks
    def register(
        self,
        demos: str | Path | Iterable[DemoLike],
        method: str = "auto",
        name: str | None = None,
        template: Template | Mapping[str, str] | Literal["chat"] | None = None,
        options: Mapping[str, Any] | None = None,
        *,
        take_name: bool = False,
        wait: bool = False,
        timeout: float | None = None,
        poll_interval: float = 0.5,
        on_progress: ProgressCallback | None = None,
    ) -> Result[TaskInfo]:
        """Register a task; with `wait`, block until it is ready (TaskFailed / WaitTimeout otherwise).

        `name` is unique within the key: one another task has raises Conflict (`name_taken`), unless
        `take_name` moves it here. The same demonstrations registered again under another name rename the task.
        """
        waiting = {"wait": wait, "timeout": timeout, "poll_interval": poll_interval, "on_progress": on_progress}
        return self._run(ops.register(demos, method, name, template, options, take_name=take_name, **waiting))

    def wait(
        self,
        task_id: str,
        *,
        timeout: float | None = None,
        poll_interval: float = 0.5,
        on_progress: ProgressCallback | None = None,
    ) -> Result[TaskInfo]:
        """Poll the task until it is ready; raises TaskFailed if it fails, WaitTimeout after `timeout` s."""
        return self._run(ops.wait_ready(task_id, timeout, poll_interval, on_progress))

    def get(self, task: str) -> Result[TaskInfo]:
        """A task by its id or its name."""
        return self._run(ops.get(task))

    def rename(self, task: str, name: str | None, *, take_name: bool = False) -> Result[TaskInfo]:
        """PATCH the task's name (None removes it). Conflict (`name_taken`) when another task of the key has
        `name`, unless `take_name`: then that task loses it in the same step."""
        return self._run(ops.rename(task, name, take_name))

    def list(self) -> Result[list[TaskInfo]]:
        """Every task of this key, newest first (the server answers in pages; this follows them all)."""
        return self._run(ops.list_tasks())

    def delete(self, task: str) -> Result[None]:
        """Delete a task (by its id or its name); its name is free again at once."""
        return self._run(ops.delete(task))

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
    ) -> Result[GenerateResponse]:
        """POST /v1/generate: give one of `prompt` (as is), `input` (in the first task's template) or `messages`.

        `steering` names tasks by id or name: `"antonyms"`, `("antonyms", 1.5)`, dicts or `SteeringEntry`s."""
        sampling = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "seed": seed}
        return self._run(
            ops.generate(partial(generate_body, prompt, input, messages, steering, False, stop=stop, **sampling))
        )

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
    ) -> Iterator[str] | AsyncIterator[str]:
        """Like `generate`, streamed: yields text pieces (an async iterator on `AsyncClient`); the final
        response goes to `on_done`."""
        sampling = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "seed": seed}
        return self._stream(
            partial(generate_body, prompt, input, messages, steering, True, stop=stop, **sampling), on_done
        )

    # vectors
    def export_vector(
        self,
        task_id: str,
        format: VectorFormat = "safetensors",
        path: str | Path | None = None,
        *,
        drop_layer_zero: bool = False,
    ) -> Result[bytes]:
        """The task's vector as safetensors (any method) or a GGUF control vector; also written to `path`."""
        return self._run(ops.export_vector(task_id, format, path, drop_layer_zero))

    def import_vector(
        self, source: bytes | str | Path, format: VectorFormat | None = None, name: str | None = None
    ) -> Result[TaskInfo]:
        """Create a ready task from a vector file (path or bytes); the format is guessed if not given."""
        return self._run(ops.import_vector(source, format, name))


class Client(_Calls):
    """A synchronous client. `base_url` and `api_key` default to $STEER_URL and $STEER_API_KEY."""

    _http_class = httpx.Client
    _http: httpx.Client

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

    def _stream(self, body: Body, on_done: Callable[[GenerateResponse], None] | None) -> Iterator[str]:
        call = ops.stream_call(body())
        decoder = StreamDecoder(on_done)
        with self._http.stream(call.method, call.path, **call.kwargs()) as resp:
            if resp.status_code >= 400:
                resp.read()
                raise api_error(resp)
            for line in resp.iter_lines():
                if piece := decoder.feed(line):
                    yield piece


class AsyncClient(_Calls):
    """The asynchronous face of `Client`: the same methods, awaited (`stream_generate` is an async iterator)."""

    _http_class = httpx.AsyncClient
    _http: httpx.AsyncClient

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

    async def _stream(self, body: Body, on_done: Callable[[GenerateResponse], None] | None) -> AsyncIterator[str]:
        call = ops.stream_call(body())
        decoder = StreamDecoder(on_done)
        async with self._http.stream(call.method, call.path, **call.kwargs()) as resp:
            if resp.status_code >= 400:
                await resp.aread()
                raise api_error(resp)
            async for line in resp.aiter_lines():
                if piece := decoder.feed(line):
                    yield piece
