"""What each client call does, free of I/O, so that `Client` and `AsyncClient` run the very same code.

An operation is a generator: it yields the HTTP calls (and pauses) it needs, gets each call's response
back (error answers have already raised) and returns its result. `run` drives one over a sync transport,
`run_async` over an async one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx

from steering.client.bodies import (
    DemoLike,
    VectorFormat,
    import_params,
    page_params,
    read_vector_file,
    register_body,
    rename_body,
    task_path,
)
from steering.client.errors import TaskFailed, WaitTimeout
from steering.wire.protocol import GenerateResponse, TaskInfo, TaskList, Template

ProgressCallback = Callable[[TaskInfo], None]
FINISHED = ("ready", "failed")
T = TypeVar("T")


@dataclass(frozen=True)
class Call:
    """One HTTP request, as `httpx.Client.request` takes it."""

    method: str
    path: str
    params: Mapping[str, Any] | None = None
    json: Any = None
    content: bytes | None = None
    headers: Mapping[str, str] | None = None

    def kwargs(self) -> dict[str, Any]:
        given = {"params": self.params, "json": self.json, "content": self.content, "headers": self.headers}
        return {k: v for k, v in given.items() if v is not None}


@dataclass(frozen=True)
class Pause:
    seconds: float


Operation = Generator[Call | Pause, Any, T]  # sent: the response to a Call, None after a Pause


def ready() -> Operation[dict[str, Any]]:
    return (yield Call("GET", "/readyz")).json()


def register(
    demos: str | Path | Iterable[DemoLike],
    method: str,
    name: str | None,
    template: Template | Mapping[str, str] | Literal["chat"] | None,
    options: Mapping[str, Any] | None,
    *,
    wait: bool,
    timeout: float | None,
    poll_interval: float,
    on_progress: ProgressCallback | None,
    take_name: bool = False,
) -> Operation[TaskInfo]:
    body = register_body(demos, method, name, template, options, take_name)
    created = (yield Call("POST", "/v1/tasks", json=body)).json()
    if wait:
        return (yield from wait_ready(created["id"], timeout, poll_interval, on_progress))
    return (yield from get(created["id"]))


def wait_ready(
    task_id: str, timeout: float | None, poll_interval: float, on_progress: ProgressCallback | None
) -> Operation[TaskInfo]:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        info = yield from get(task_id)
        if on_progress is not None:
            on_progress(info)
        if info.status == "ready":
            return info
        if info.status == "failed":
            raise TaskFailed(info)
        if deadline is not None and time.monotonic() >= deadline:
            raise WaitTimeout(info, timeout or 0.0)
        yield Pause(poll_interval)


def get(task: str) -> Operation[TaskInfo]:
    return TaskInfo.model_validate_json((yield Call("GET", task_path(task))).content)


def rename(task: str, name: str | None, take_name: bool) -> Operation[TaskInfo]:
    response = yield Call("PATCH", task_path(task), json=rename_body(name, take_name))
    return TaskInfo.model_validate_json(response.content)


def list_tasks() -> Operation[list[TaskInfo]]:
    tasks: list[TaskInfo] = []
    offset: int | None = 0
    while offset is not None:
        page = TaskList.model_validate_json((yield Call("GET", "/v1/tasks", params=page_params(offset))).content)
        tasks += page.tasks
        offset = page.next_offset
    return tasks


def delete(task: str) -> Operation[None]:
    yield Call("DELETE", task_path(task))


def generate(body: Callable[[], dict[str, Any]]) -> Operation[GenerateResponse]:
    """`body` is built when the operation runs (an invalid request raises there, as every other check does)."""
    return GenerateResponse.model_validate_json((yield Call("POST", "/v1/generate", json=body())).content)


def stream_call(body: dict[str, Any]) -> Call:
    """The request of a streamed generation (read line by line, not through an operation)."""
    return Call("POST", "/v1/generate", json=body, headers={"Accept": "text/event-stream"})


def export_vector(
    task_id: str, format: VectorFormat, path: str | Path | None, drop_layer_zero: bool
) -> Operation[bytes]:
    params = {"format": format, "drop_layer_zero": str(drop_layer_zero).lower()}
    data = (yield Call("GET", task_path(task_id, "/vector"), params=params)).content
    if path is not None:
        Path(path).write_bytes(data)
    return data


def import_vector(source: bytes | str | Path, format: VectorFormat | None, name: str | None) -> Operation[TaskInfo]:
    data, guessed = read_vector_file(source)
    params = import_params(data, format or guessed, name)
    headers = {"Content-Type": "application/octet-stream"}
    response = yield Call("POST", "/v1/tasks/import", content=data, params=params, headers=headers)
    return TaskInfo.model_validate_json(response.content)


def run(operation: Operation[T], send: Callable[[Call], httpx.Response]) -> T:
    reply = None
    try:
        while True:
            step = operation.send(reply)
            if isinstance(step, Pause):
                time.sleep(step.seconds)
                reply = None
            else:
                reply = send(step)
    except StopIteration as done:
        return done.value


async def run_async(operation: Operation[T], send: Callable[[Call], Awaitable[httpx.Response]]) -> T:
    reply = None
    try:
        while True:
            step = operation.send(reply)
            if isinstance(step, Pause):
                await asyncio.sleep(step.seconds)
                reply = None
            else:
                reply = await send(step)
    except StopIteration as done:
        return done.value
