"""How the server holds connections: uvicorn's options, and a deadline on reading each request's head.

uvicorn closes idle kept-alive connections (`timeout_keep_alive`) and answers 503 beyond
`limit_concurrency`, but it has no deadline for a request line and headers that arrive slowly: a client
sending one header line every few seconds (slowloris) never reaches the app, so no ASGI middleware can
see it. `HeadDeadlineProtocol` closes such a connection `head_timeout_s` after it opened, or after the
first byte of its next request. The body's deadline is the app's (`app.middleware.BodyReading`), where
the answer can be a 408 in the service's error shape.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, ClassVar

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.settings import Settings

log = logging.getLogger(__name__)


class HeadDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a deadline from a connection opening (or the first byte of a
    request on a kept-alive connection) to the end of the request's headers.

    When it passes, the connection is closed, after a 408 in the service's error shape if part of a request
    came (a connection that sent nothing is closed quietly, as uvicorn closes idle kept-alive ones).
    """

    head_timeout_s: ClassVar[float] = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_deadline: asyncio.TimerHandle | None = None
        self._head_started = False

    @classmethod
    def with_head_timeout(cls, head_timeout_s: float) -> type[HeadDeadlineProtocol]:
        """This protocol with its deadline (uvicorn builds protocols from a class and fixed arguments)."""
        return type(cls.__name__, (cls,), {"head_timeout_s": head_timeout_s})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.cycle is None or self.cycle.response_complete:
            # Between requests: these bytes begin a request head (uvicorn has just cancelled its keep-alive timer).
            self._head_started = True
            self._arm_head_deadline()
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._cancel_head_deadline()
        self._head_started = False
        super().on_headers_complete()

    def _arm_head_deadline(self) -> None:
        if self._head_deadline is None:
            self._head_deadline = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _cancel_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if self.transport.is_closing():
            return
        if self._head_started:
            log.info("closing %s: its request headers took over %g s", self.client, self.head_timeout_s)
            self.transport.write(self._timeout_response())
        self.transport.close()

    def _timeout_response(self) -> bytes:
        message = f"the request line and headers did not arrive within {self.head_timeout_s:g} s"
        body = json.dumps({"error": {"type": "request_timeout", "message": message}}, separators=(",", ":")).encode()
        head = [b"HTTP/1.1 408 Request Timeout"]
        head += [name + b": " + value for name, value in self.server_state.default_headers]
        head += [b"content-type: application/json", b"content-length: %d" % len(body), b"connection: close"]
        return b"\r\n".join(head) + b"\r\n\r\n" + body


def uvicorn_config(app: FastAPI, settings: Settings) -> uvicorn.Config:
    """The server's uvicorn configuration: address, drain time and the bounds on connections."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        http=HeadDeadlineProtocol.with_head_timeout(settings.header_timeout_s),
        limit_concurrency=settings.max_connections,
        timeout_graceful_shutdown=max(1, round(settings.drain_timeout_s)),
    )
