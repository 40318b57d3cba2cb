"""ASGI middleware: request ids, a body-size limit (413) and per-route request metrics."""

from __future__ import annotations

import re
import time
import uuid

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import error_response
from app.metrics import Metrics

_CLIENT_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class RequestId:
    """Every request gets an id (the client's `X-Request-ID` if it is sane), echoed in the response header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = given if _CLIENT_ID.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid

        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        await self.app(scope, receive, tagged)


class BodyLimit:
    """Refuse bodies over `max_bytes`, by Content-Length up front or by counting a chunked body.

    `per_path` raises the limit for given paths (vector uploads are larger than JSON requests).
    """

    def __init__(self, app: ASGIApp, max_bytes: int, per_path: dict[str, int] | None = None) -> None:
        self.app, self.default_max, self.per_path = app, max_bytes, per_path or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.per_path.get(scope["path"], self.default_max)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            await self._too_large(scope, receive, send, max_bytes)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > max_bytes:
                raise _TooLarge(max_bytes)
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await self._too_large(scope, receive, send, max_bytes)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, max_bytes: int) -> None:
        response = error_response(413, "body_too_large", _too_large_message(max_bytes))
        await response(scope, receive, send)


def _too_large_message(max_bytes: int) -> str:
    return f"the request body is over {max_bytes} bytes"


class _TooLarge(HTTPException):
    """An HTTPException, so that FastAPI's body parsing passes it on (it turns other errors into a 400)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, _too_large_message(max_bytes))


class RequestMetrics:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(path, scope["method"], str(status[0])).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - started)
