"""ASGI middleware: request ids, the time a body may take (408), a body-size limit (413), per-route request metrics."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from email.message import Message as MimeHeader

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.error_codes import ApiErrors
from app.errors import api_error_response, quoted
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


class BodyReading:
    """A request body must arrive in time (408), and one answered before it was read is dropped before closing.

    The body must arrive within `timeout_s`, plus one second for every `min_rate` bytes received (the rule of
    Apache's mod_reqtimeout): a large upload on a slow link goes on, a trickle is cut. A response that starts
    before its request's body was read whole (a 413, a 401) closes the connection, and before its last bytes
    go out up to `discard_bytes` of the rest are read and dropped (for at most `discard_timeout_s`): a client
    that sends its whole body before reading (Python's urllib, which also asks for `Connection: close`) would
    otherwise meet a reset instead of the answer.
    """

    def __init__(
        self, app: ASGIApp, timeout_s: float, min_rate: int, discard_bytes: int, discard_timeout_s: float
    ) -> None:
        self.app = app
        self.timeout_s, self.min_rate = timeout_s, min_rate
        self.discard_bytes, self.discard_timeout_s = discard_bytes, discard_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = _RequestBody(self, Headers(scope=scope), receive, send)
        try:
            await self.app(scope, body.receive, body.send)
        except _BodyTimeout as exc:
            if body.response_started:
                raise
            await api_error_response(exc.error)(scope, body.receive, body.send)


class _RequestBody:
    """One request's body as `BodyReading` sees it: how much came, whether all of it, whether it was answered."""

    def __init__(self, limits: BodyReading, headers: Headers, receive: Receive, send: Send) -> None:
        self.limits, self._receive, self._send = limits, receive, send
        declared = headers.get("content-length")
        self.declared = int(declared) if declared is not None and declared.isdigit() else None
        self.complete = self.declared == 0 or (self.declared is None and "transfer-encoding" not in headers)
        self.awaits_continue = headers.get("expect", "").lower() == "100-continue"
        self.received = 0
        self.timed_out = False
        self.response_started = False
        self.answered_early = False
        self.started = asyncio.get_running_loop().time()

    async def receive(self) -> Message:
        if self.complete:  # the body is in: what follows is the wait for a disconnect (streaming responses)
            return await self._receive()
        now = asyncio.get_running_loop().time()
        left_s = self.started + self.limits.timeout_s + self.received / self.limits.min_rate - now
        try:
            message = await asyncio.wait_for(self._receive(), max(left_s, 0.0))
        except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
            self.timed_out = True
            raise _BodyTimeout(self.received, asyncio.get_running_loop().time() - self.started, self.limits) from None
        self._count(message)
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.response_started = True
            if not self.complete:
                self.answered_early = True
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
        last = message["type"] == "http.response.body" and not message.get("more_body", False)
        if last and self.answered_early and not self.timed_out:
            await self._discard_rest()
        await self._send(message)

    async def _discard_rest(self) -> None:
        """Read and drop what is left of the body, within the bounds; the connection closes after the answer."""
        if self.awaits_continue and self.received == 0:
            return  # the client waits for "100 Continue", which it will not get: it sends no body
        if self.declared is not None and self.declared - self.received > self.limits.discard_bytes:
            return
        with contextlib.suppress(asyncio.TimeoutError):  # not the builtin TimeoutError before Python 3.11
            await asyncio.wait_for(self._drop_rest(), self.limits.discard_timeout_s)

    async def _drop_rest(self) -> None:
        dropped = 0
        while not self.complete and dropped <= self.limits.discard_bytes:
            before = self.received
            self._count(await self._receive())
            dropped += self.received - before

    def _count(self, message: Message) -> None:
        if message["type"] != "http.request":
            self.complete = True  # a disconnect: nothing more will come
            return
        self.received += len(message.get("body", b""))
        if not message.get("more_body", False):
            self.complete = True


class _BodyTimeout(HTTPException):
    """An HTTPException, so that FastAPI's body parsing passes it on (it turns other errors into a 400)."""

    def __init__(self, received: int, elapsed_s: float, limits: BodyReading) -> None:
        self.error = ApiErrors.BODY_TOO_SLOW(
            received=received, elapsed_s=elapsed_s, timeout_s=limits.timeout_s, min_rate=limits.min_rate
        )
        super().__init__(self.error.status, self.error.message)


class BodyEncoding:
    """A body comes as it is, in UTF-8: a compressed one or another charset is refused up front, with a 400
    that says so (the server decompresses nothing, and its JSON parser would only say it could not parse)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem = _encoding_problem(Headers(scope=scope))
        if problem is None:
            await self.app(scope, receive, send)
            return
        await api_error_response(ApiErrors.UNSUPPORTED_BODY(reason=problem))(scope, receive, send)


_UTF8_CHARSETS = {"utf-8", "utf8", "us-ascii", "ascii"}  # ASCII is UTF-8


def _encoding_problem(headers: Headers) -> str | None:
    if headers.get("content-length", "0") == "0" and "transfer-encoding" not in headers:
        return None  # no body: nothing to be encoded
    coding = headers.get("content-encoding", "identity").strip()
    if coding.lower() != "identity":
        return f"request bodies must not be compressed (Content-Encoding {quoted(coding)}): send them as they are"
    content_type = MimeHeader()
    content_type["content-type"] = headers.get("content-type", "")
    charset = content_type.get_content_charset()  # lower case, None when not given
    if charset is not None and charset not in _UTF8_CHARSETS:
        return f"charset {quoted(charset)} is not supported; send UTF-8"
    return None


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
        await api_error_response(ApiErrors.BODY_TOO_LARGE(limit=max_bytes))(scope, receive, send)


class _TooLarge(HTTPException):
    """An HTTPException, so that FastAPI's body parsing passes it on (it turns other errors into a 400)."""

    def __init__(self, max_bytes: int) -> None:
        error = ApiErrors.BODY_TOO_LARGE(limit=max_bytes)
        super().__init__(error.status, error.message)


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
