"""A Python client for the steering service's HTTP API: `Client` (sync) and `AsyncClient`, over httpx.

    from steering.client import Client

    with Client("http://127.0.0.1:8000") as client:
        task = client.register("hot -> cold\\nbig -> small\\nfast -> slow", method="task_vector", wait=True)
        print(client.generate(input="tall", steering=[task.id]).text)
        for piece in client.stream_generate(input="early", steering=[(task.id, 1.5)]):
            print(piece, end="", flush=True)

Requests and responses are the pydantic models of `steering.protocol`, the same ones the server
validates with. Every error answer raises a `SteeringAPIError` subclass chosen by its status and type.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx

from steering.datasets import read_demonstrations
from steering.protocol import (
    ChatMessage,
    Demonstration,
    GenerateRequest,
    GenerateResponse,
    SteeringEntry,
    TaskCreate,
    TaskInfo,
    TaskList,
    Template,
)

DEFAULT_URL = "http://127.0.0.1:8000"
VectorFormat = Literal["safetensors", "gguf"]
DemoLike = Demonstration | Mapping[str, str] | tuple[str, str]
SteeringLike = SteeringEntry | str | tuple[str, float] | Mapping[str, Any]
ProgressCallback = Callable[[TaskInfo], None]
FINISHED = ("ready", "failed")

__all__ = [
    "AsyncClient",
    "BadRequest",
    "Client",
    "Conflict",
    "Forbidden",
    "NotFound",
    "NotReady",
    "Overloaded",
    "SteeringAPIError",
    "SteeringError",
    "TaskFailed",
    "TooLarge",
    "Unauthorized",
    "WaitTimeout",
]


# ------------------------------------------------------------------------------------------- errors


class SteeringError(Exception):
    """Anything this client raises on purpose."""


class SteeringAPIError(SteeringError):
    """The server answered with an error: `status` (HTTP), `type` and `message` from its JSON body."""

    def __init__(self, status: int, type: str, message: str, detail: Any = None) -> None:
        super().__init__(f"{status} {type}: {message}")
        self.status, self.type, self.message, self.detail = status, type, message, detail


class BadRequest(SteeringAPIError):
    """400/422: the request was invalid (bad options, too many demonstrations, a vector that won't export...)."""


class Unauthorized(SteeringAPIError):
    """401: the server needs an API key, or the one sent is wrong."""


class Forbidden(SteeringAPIError):
    """403."""


class NotFound(SteeringAPIError):
    """404: no such task (for this API key)."""


class Conflict(SteeringAPIError):
    """409: the request conflicts with the server's state (e.g. a vector computed on another model)."""


class NotReady(Conflict):
    """409 task_not_ready: the task's vector is still being computed (or failed)."""


class TooLarge(SteeringAPIError):
    """413: the request body is over the server's limit."""


class Overloaded(SteeringAPIError):
    """429/503: the server is busy or its store is unreachable; `retry_after` seconds if it said."""

    retry_after: float | None = None


class TaskFailed(SteeringError):
    """Waiting for a task ended with the task failed; `task` holds its info and error."""

    def __init__(self, task: TaskInfo) -> None:
        super().__init__(f"task {task.id} failed: {task.error}")
        self.task = task


class WaitTimeout(SteeringError, TimeoutError):
    """The task did not finish within the wait's timeout; `task` is its last known info."""

    def __init__(self, task: TaskInfo, timeout: float) -> None:
        super().__init__(f"task {task.id} is still {task.status} after {timeout:g} s")
        self.task = task


_BY_STATUS: dict[int, type[SteeringAPIError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: TooLarge,
    422: BadRequest,
    429: Overloaded,
    503: Overloaded,
}


def api_error(response: httpx.Response) -> SteeringAPIError:
    """The exception for an error response, from its `{error: {type, message, ...}}` body."""
    try:
        body = json.loads(response.content or b"null")
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        kind = str(error.get("type", "error"))
        message = str(error.get("message", ""))
        detail = {k: v for k, v in error.items() if k not in ("type", "message")} or None
    else:
        kind, message, detail = "http_error", response.text[:500] or response.reason_phrase, None
    cls = NotReady if response.status_code == 409 and kind == "task_not_ready" else None
    cls = cls or _BY_STATUS.get(response.status_code, SteeringAPIError)
    exc = cls(response.status_code, kind, message, detail)
    if isinstance(exc, Overloaded):
        retry = response.headers.get("retry-after")
        exc.retry_after = float(retry) if retry and retry.replace(".", "", 1).isdigit() else None
    return exc


def _check(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        raise api_error(response)
    return response


# ----------------------------------------------------------------------------------- request bodies


def demonstrations(demos: str | Path | Iterable[DemoLike]) -> list[Demonstration]:
    """Demonstrations from a file path, text (`a -> b` lines or JSONL), or pairs / dicts / models."""
    if isinstance(demos, (str, Path)):
        return read_demonstrations(demos)
    out = []
    for demo in demos:
        if isinstance(demo, Demonstration):
            out.append(demo)
        elif isinstance(demo, tuple):
            out.append(Demonstration(input=demo[0], output=demo[1]))
        else:
            out.append(Demonstration(**demo))
    return out


def _page(offset: int) -> dict[str, int]:
    return {"offset": offset, "limit": 200}


def steering_entries(steering: Iterable[SteeringLike] | SteeringLike | None) -> list[SteeringEntry]:
    """Steering entries from ids (`"task-..."`), `(id, strength)` pairs, dicts or `SteeringEntry` models."""
    if steering is None:
        return []
    if isinstance(steering, (str, SteeringEntry, Mapping)):
        steering = [steering]
    out = []
    for entry in steering:
        if isinstance(entry, SteeringEntry):
            out.append(entry)
        elif isinstance(entry, str):
            out.append(SteeringEntry(task=entry))
        elif isinstance(entry, tuple):
            out.append(SteeringEntry(task=entry[0], strength=entry[1]))
        else:
            out.append(SteeringEntry(**entry))
    return out


def register_body(
    demos: str | Path | Iterable[DemoLike],
    method: str,
    name: str | None,
    template: Template | Mapping[str, str] | None,
    options: Mapping[str, Any] | None,
) -> dict[str, Any]:
    body = TaskCreate(
        demonstrations=demonstrations(demos),
        method=method,  # type: ignore[arg-type]  # validated by the model
        name=name,
        template=Template(**template) if isinstance(template, Mapping) else template,
        options=dict(options or {}),
    )
    return body.model_dump(mode="json", exclude_none=True)


def generate_body(
    prompt: str | None,
    input: str | None,
    messages: Sequence[ChatMessage | Mapping[str, str]] | None,
    steering: Iterable[SteeringLike] | SteeringLike | None,
    stream: bool,
    **sampling: Any,
) -> dict[str, Any]:
    request = GenerateRequest(
        prompt=prompt,
        input=input,
        messages=[m if isinstance(m, ChatMessage) else ChatMessage(**m) for m in messages] if messages else None,
        steering=steering_entries(steering),
        stream=stream,
        **{k: v for k, v in sampling.items() if v is not None},
    )
    return request.model_dump(mode="json", exclude_none=True)


def import_params(data: bytes, format: VectorFormat | None, name: str | None) -> dict[str, str]:
    params = {"format": format or ("gguf" if data[:4] == b"GGUF" else "safetensors")}
    if name:
        params["name"] = name
    return params


def read_vector_file(source: bytes | str | Path) -> tuple[bytes, VectorFormat | None]:
    """The bytes to import, and the format a file's suffix names (None: let the server guess)."""
    if isinstance(source, bytes):
        return source, None
    path = Path(source)
    suffix = path.suffix.lower().lstrip(".")
    return path.read_bytes(), suffix if suffix in ("gguf", "safetensors") else None  # type: ignore[return-value]


# ------------------------------------------------------------------------------------ server-sent events


@dataclass
class Event:
    event: str
    data: str


class SSEParser:
    """Turns the lines of a text/event-stream into events (comments and pings are skipped)."""

    def __init__(self) -> None:
        self._event, self._data = "message", []

    def feed(self, line: str) -> Event | None:
        line = line.rstrip("\r\n")
        if not line:
            if not self._data:
                self._event = "message"
                return None
            event = Event(self._event, "\n".join(self._data))
            self._event, self._data = "message", []
            return event
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
        return None


def _stream_piece(event: Event, on_done: Callable[[GenerateResponse], None] | None) -> str | None:
    """The text of a token event; a done event is handed to `on_done`; an error event raises."""
    if event.event == "token":
        return str(json.loads(event.data)["text"])
    if event.event == "done" and on_done is not None:
        on_done(GenerateResponse.model_validate_json(event.data))
    elif event.event == "error":
        body = json.loads(event.data)
        error = body.get("error", body) if isinstance(body, dict) else {}
        raise SteeringAPIError(500, str(error.get("type", "error")), str(error.get("message", event.data)))
    return None


# --------------------------------------------------------------------------------------- the clients


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

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return _check(self._http.request(method, path, **kwargs))

    # server
    def ready(self) -> dict[str, Any]:
        """GET /readyz: model name, fingerprint and store state (raises Overloaded while unready)."""
        return self._request("GET", "/readyz").json()

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
        body = register_body(demos, method, name, template, options)
        created = self._request("POST", "/v1/tasks", json=body).json()
        if wait:
            return self.wait(created["id"], timeout=timeout, poll_interval=poll_interval, on_progress=on_progress)
        return self.get(created["id"])

    def wait(
        self,
        task_id: str,
        *,
        timeout: float | None = None,
        poll_interval: float = 0.5,
        on_progress: ProgressCallback | None = None,
    ) -> TaskInfo:
        """Poll the task until it is ready; raises TaskFailed if it fails, WaitTimeout after `timeout` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            info = self.get(task_id)
            if on_progress is not None:
                on_progress(info)
            if info.status == "ready":
                return info
            if info.status == "failed":
                raise TaskFailed(info)
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(info, timeout or 0.0)
            time.sleep(poll_interval)

    def get(self, task_id: str) -> TaskInfo:
        return TaskInfo.model_validate_json(self._request("GET", f"/v1/tasks/{task_id}").content)

    def list(self) -> list[TaskInfo]:
        """Every task of this key, newest first (the server answers in pages; this follows them all)."""
        tasks, offset = [], 0
        while offset is not None:
            page = TaskList.model_validate_json(self._request("GET", "/v1/tasks", params=_page(offset)).content)
            tasks += page.tasks
            offset = page.next_offset
        return tasks

    def delete(self, task_id: str) -> None:
        self._request("DELETE", f"/v1/tasks/{task_id}")

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
        body = generate_body(
            prompt,
            input,
            messages,
            steering,
            False,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            stop=stop,
        )
        return GenerateResponse.model_validate_json(self._request("POST", "/v1/generate", json=body).content)

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
        body = generate_body(
            prompt,
            input,
            messages,
            steering,
            True,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            stop=stop,
        )
        with self._http.stream("POST", "/v1/generate", json=body, headers={"Accept": "text/event-stream"}) as resp:
            if resp.status_code >= 400:
                resp.read()
                raise api_error(resp)
            parser = SSEParser()
            for line in resp.iter_lines():
                event = parser.feed(line)
                piece = _stream_piece(event, on_done) if event else None
                if piece:
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
        params = {"format": format, "drop_layer_zero": str(drop_layer_zero).lower()}
        data = self._request("GET", f"/v1/tasks/{task_id}/vector", params=params).content
        if path is not None:
            Path(path).write_bytes(data)
        return data

    def import_vector(
        self, source: bytes | str | Path, format: VectorFormat | None = None, name: str | None = None
    ) -> TaskInfo:
        """Create a ready task from a vector file (path or bytes); the format is guessed if not given."""
        data, guessed = read_vector_file(source)
        params = import_params(data, format or guessed, name)
        headers = {"Content-Type": "application/octet-stream"}
        response = self._request("POST", "/v1/tasks/import", content=data, params=params, headers=headers)
        return TaskInfo.model_validate_json(response.content)


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

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return _check(await self._http.request(method, path, **kwargs))

    async def ready(self) -> dict[str, Any]:
        return (await self._request("GET", "/readyz")).json()

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
        body = register_body(demos, method, name, template, options)
        created = (await self._request("POST", "/v1/tasks", json=body)).json()
        if wait:
            return await self.wait(created["id"], timeout=timeout, poll_interval=poll_interval, on_progress=on_progress)
        return await self.get(created["id"])

    async def wait(
        self,
        task_id: str,
        *,
        timeout: float | None = None,
        poll_interval: float = 0.5,
        on_progress: ProgressCallback | None = None,
    ) -> TaskInfo:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            info = await self.get(task_id)
            if on_progress is not None:
                on_progress(info)
            if info.status == "ready":
                return info
            if info.status == "failed":
                raise TaskFailed(info)
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(info, timeout or 0.0)
            await asyncio.sleep(poll_interval)

    async def get(self, task_id: str) -> TaskInfo:
        return TaskInfo.model_validate_json((await self._request("GET", f"/v1/tasks/{task_id}")).content)

    async def list(self) -> list[TaskInfo]:
        """Every task of this key, newest first (the server answers in pages; this follows them all)."""
        tasks, offset = [], 0
        while offset is not None:
            response = await self._request("GET", "/v1/tasks", params=_page(offset))
            page = TaskList.model_validate_json(response.content)
            tasks += page.tasks
            offset = page.next_offset
        return tasks

    async def delete(self, task_id: str) -> None:
        await self._request("DELETE", f"/v1/tasks/{task_id}")

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
        body = generate_body(
            prompt,
            input,
            messages,
            steering,
            False,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            stop=stop,
        )
        response = await self._request("POST", "/v1/generate", json=body)
        return GenerateResponse.model_validate_json(response.content)

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
        body = generate_body(
            prompt,
            input,
            messages,
            steering,
            True,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            stop=stop,
        )
        headers = {"Accept": "text/event-stream"}
        async with self._http.stream("POST", "/v1/generate", json=body, headers=headers) as resp:
            if resp.status_code >= 400:
                await resp.aread()
                raise api_error(resp)
            parser = SSEParser()
            async for line in resp.aiter_lines():
                event = parser.feed(line)
                piece = _stream_piece(event, on_done) if event else None
                if piece:
                    yield piece

    async def export_vector(
        self,
        task_id: str,
        format: VectorFormat = "safetensors",
        path: str | Path | None = None,
        *,
        drop_layer_zero: bool = False,
    ) -> bytes:
        params = {"format": format, "drop_layer_zero": str(drop_layer_zero).lower()}
        data = (await self._request("GET", f"/v1/tasks/{task_id}/vector", params=params)).content
        if path is not None:
            Path(path).write_bytes(data)
        return data

    async def import_vector(
        self, source: bytes | str | Path, format: VectorFormat | None = None, name: str | None = None
    ) -> TaskInfo:
        data, guessed = read_vector_file(source)
        params = import_params(data, format or guessed, name)
        headers = {"Content-Type": "application/octet-stream"}
        response = await self._request("POST", "/v1/tasks/import", content=data, params=params, headers=headers)
        return TaskInfo.model_validate_json(response.content)
