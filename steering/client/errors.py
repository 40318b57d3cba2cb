"""The client's exceptions, and the one that an error response becomes."""

from __future__ import annotations

import json
from typing import Any

import httpx

from steering.wire.protocol import TaskInfo


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


def check(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        raise api_error(response)
    return response
