"""Reading a request is bounded on a real server process: slow heads and slow bodies are cut, early answers
(a 413) reach clients that send their whole body before reading, and responses themselves are not bounded."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sse_starlette import EventSourceResponse

from app.connections import uvicorn_config
from app.middleware import BodyReading
from app.settings import Settings
from scripts.server_process import free_port
from tests.conftest import ServerProcess, start_server

HEAD_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0
MAX_BODY_BYTES = 100_000
# Past the deadline, the time a closed connection may take to show (a loaded machine, a slow test runner).
MARGIN_S = 1.5


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("connections")
    env = {
        "STEER_MODEL": "tiny:llama",
        "STEER_DATA_DIR": str(tmp / "data"),
        "STEER_HEADER_TIMEOUT_S": str(HEAD_TIMEOUT_S),
        "STEER_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
        "STEER_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
    }
    process = start_server(env, tmp / "server.log")
    yield process
    process.stop()


def connect(server: ServerProcess) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=HEAD_TIMEOUT_S + BODY_TIMEOUT_S + 2 * MARGIN_S)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a timeout here fails the test)."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def read_response(sock: socket.socket) -> bytes:
    """One response with a Content-Length from a kept-alive connection."""
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(65536)
    head, _, body = received.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def error_of(raw_response: bytes, status: int) -> dict[str, Any]:
    """The service's JSON error from a raw HTTP/1.1 response with this status, which also closes the connection."""
    head, _, body = raw_response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith(f"HTTP/1.1 {status} "), raw_response[:300]
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    assert headers.get("connection") == "close", headers
    error = json.loads(body)["error"]
    assert isinstance(error["type"], str) and isinstance(error["message"], str), error
    return error


def trickle_head(server: ServerProcess) -> tuple[bytes, float]:
    """A slowloris client: a request line, then one header line every 0.2 s; what it got, and when it was closed."""
    with connect(server) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")
        try:
            while time.monotonic() - started < HEAD_TIMEOUT_S + 2 * MARGIN_S:
                time.sleep(0.2)
                sock.sendall(b"X-Slow: 1\r\n")
        except OSError:
            pass  # closed under our feet: what it answered is in the receive buffer
        received = read_until_closed(sock)
        return received, time.monotonic() - started


def test_slow_request_heads_are_closed_with_408(server: ServerProcess) -> None:
    with ThreadPoolExecutor(max_workers=20) as pool:
        outcomes = list(pool.map(lambda _: trickle_head(server), range(20)))
    for received, elapsed in outcomes:
        error = error_of(received, 408)
        assert error["type"] == "request_timeout", error
        assert HEAD_TIMEOUT_S * 0.9 <= elapsed < HEAD_TIMEOUT_S + MARGIN_S, elapsed
    # The server is none the worse: a request at ordinary speed is answered.
    assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200


def test_a_connection_that_sends_nothing_is_closed(server: ServerProcess) -> None:
    with connect(server) as sock:
        started = time.monotonic()
        assert read_until_closed(sock) == b""
        assert time.monotonic() - started < HEAD_TIMEOUT_S + MARGIN_S


def test_a_kept_alive_connection_bounds_each_head(server: ServerProcess) -> None:
    """A kept-alive connection serves a second request sent after a pause; a second head that trickles is cut."""
    request = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n"
    with connect(server) as sock:
        for _ in range(2):
            sock.sendall(request)
            assert read_response(sock).startswith(b"HTTP/1.1 200 ")
            time.sleep(HEAD_TIMEOUT_S * 0.8)  # longer, in all, than one head deadline
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        error = error_of(read_until_closed(sock), 408)
        assert error["type"] == "request_timeout"
        assert time.monotonic() - started < HEAD_TIMEOUT_S + MARGIN_S


def test_a_body_that_stops_coming_gets_408(server: ServerProcess) -> None:
    with connect(server) as sock:
        started = time.monotonic()
        sock.sendall(
            b"POST /v1/tasks HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"a":1'
        )
        error = error_of(read_until_closed(sock), 408)
        elapsed = time.monotonic() - started
    assert error["type"] == "request_timeout" and "6 bytes" in error["message"], error
    assert BODY_TIMEOUT_S * 0.9 <= elapsed < BODY_TIMEOUT_S + MARGIN_S, elapsed


def test_urllib_reads_the_413_of_a_body_over_the_limit(server: ServerProcess) -> None:
    """urllib sends its whole body before reading, with `Connection: close`: it reads the 413, not a reset."""
    for size in (2 * MAX_BODY_BYTES, 10 * MAX_BODY_BYTES, 20 * MAX_BODY_BYTES) * 3:
        request = urllib.request.Request(
            f"{server.url}/v1/tasks", data=b" " * size, headers={"Content-Type": "application/json"}
        )
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(request, timeout=30)
        assert answer.value.code == 413, size
        assert json.loads(answer.value.read())["error"]["type"] == "body_too_large"


def test_a_long_stream_outlives_the_read_deadlines(tmp_path: Path) -> None:
    """Only reading the request is bounded: a response streamed well past both deadlines ends normally.

    A stream of the service's kind (sse-starlette, which waits on `receive` for a disconnect) that lasts a
    set time, served with the service's uvicorn configuration and body middleware: the tiny model's
    generations are too quick to outlast the deadlines on every machine.
    """
    deadline_s, events, pause_s = 0.3, 8, 0.2
    app = FastAPI()

    @app.post("/stream")
    async def stream(body: dict[str, Any]) -> EventSourceResponse:
        async def ticks() -> AsyncIterator[dict[str, str]]:
            for i in range(events):
                await asyncio.sleep(pause_s)
                yield {"event": "tick", "data": str(i)}

        return EventSourceResponse(ticks())

    app.add_middleware(BodyReading, timeout_s=deadline_s, min_rate=10**9, discard_bytes=0, discard_timeout_s=0)
    config = Settings(
        host="127.0.0.1", port=free_port(), header_timeout_s=deadline_s, body_timeout_s=deadline_s, data_dir=tmp_path
    )
    server = uvicorn.Server(uvicorn_config(app, config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive(), "the server did not start"
            time.sleep(0.02)
        started = time.monotonic()
        ticks = []
        with httpx.stream("POST", f"http://127.0.0.1:{config.port}/stream", json={"a": 1}, timeout=10) as response:
            assert response.status_code == 200
            ticks = [line for line in response.iter_lines() if line.startswith("data:")]
        assert ticks == [f"data: {i}" for i in range(events)]
        assert time.monotonic() - started > events * pause_s > 4 * deadline_s
    finally:
        server.should_exit = True
        thread.join(timeout=10)
