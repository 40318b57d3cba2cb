"""Fixtures for the task store: a real throwaway redis-server, and `store` over both backends.

Use from a conftest with `pytest_plugins = ["tests.store_fixtures"]` (top-level conftest only)
or `from tests.store_fixtures import redis_url, store, store_backend  # noqa: F401`.
`redis_server_factory` starts dedicated servers for fault tests (kill -9, SIGSTOP, restart, full).
Set STEER_TEST_REDIS_URL to run against an existing Redis instead of starting one.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis

from app.store import RedisStore, SqliteStore, TaskStore
from scripts.server_process import free_port

__all__ = ["free_port"]  # tests import it from here

_install_tried = False


def _find_redis_server() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    for candidate in ("/usr/bin/redis-server", "/usr/sbin/redis-server", "/usr/local/bin/redis-server"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _try_apt_install() -> None:
    """One attempt per session to `apt-get install -y redis-server`, as root only."""
    global _install_tried
    if _install_tried or not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("apt-get"):
        return
    _install_tried = True
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "redis-server"]
    if subprocess.run(install, env=env, capture_output=True, timeout=600).returncode != 0:
        # A fresh image often has no package lists yet.
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
        subprocess.run(install, env=env, capture_output=True, timeout=600)


def redis_server_binary() -> str:
    binary = _find_redis_server()
    if binary is None:
        _try_apt_install()
        binary = _find_redis_server()
    if binary is None:
        pytest.fail(
            "redis-server is not installed and `apt-get install -y redis-server` did not provide it; "
            "the store tests need a real Redis: install redis-server or set STEER_TEST_REDIS_URL",
            pytrace=False,
        )
    return binary


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _launch(binary: str, port: int, workdir: Path, extra: list[str]) -> subprocess.Popen[bytes]:
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    args += ["--daemonize", "no", "--dir", str(workdir), *extra]  # later options win over earlier ones
    with open(workdir / "redis.log", "ab") as log:
        return subprocess.Popen(args, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)


def _wait_ping(proc: subprocess.Popen[bytes], port: int, timeout_s: float = 15) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None and not _answers_ping(port):
        time.sleep(0.05)
    return proc.poll() is None and _answers_ping(port)


@dataclass
class RedisServer:
    """A dedicated redis-server process that a test may kill, pause, fill up or restart on the same port."""

    binary: str
    workdir: Path
    extra: list[str]
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    paused: bool = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start on `port` (a free one the first time); the data is whatever `workdir` holds (AOF, if enabled)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        for _attempt in range(3 if self.port == 0 else 40):  # a fixed port may still be held for a moment
            port = self.port or free_port()
            self.proc = _launch(self.binary, port, self.workdir, self.extra)
            if _wait_ping(self.proc, port):
                self.port, self.paused = port, False
                return
            _stop(self.proc)
            time.sleep(0.25)
        pytest.fail(f"redis-server did not start; log:\n{self.log()}", pytrace=False)

    def kill(self) -> None:
        """kill -9: no shutdown, no final save."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.paused = False

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections, nothing answers."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def restart(self, *, empty: bool) -> None:
        """kill -9 and start again on the same port, with no data (`empty`) or with what the AOF kept."""
        self.kill()
        if empty:
            for item in self.workdir.iterdir():
                if item.is_dir():
                    shutil.rmtree(item)
                elif item.name != "redis.log":
                    item.unlink()
        self.start()

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def stop(self) -> None:
        if self.proc is not None:
            if self.paused:
                self.resume()
            _stop(self.proc)

    def log(self) -> str:
        path = self.workdir / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture
def redis_server_factory(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start dedicated redis-servers: `redis_server_factory("--maxmemory", "2mb")`; stopped after the test."""
    started: list[RedisServer] = []

    def make(*extra: str) -> RedisServer:
        server = RedisServer(redis_server_binary(), tmp_path / f"redis{len(started)}", list(extra))
        server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real redis-server started for this test session (killed at the end)."""
    external = os.environ.get("STEER_TEST_REDIS_URL")
    if external:
        yield external
        return
    server = RedisServer(redis_server_binary(), tmp_path_factory.mktemp("redis"), [])
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@dataclass
class StoreBackend:
    """How to open one test's store, in this process or (via `config`) in a child process."""

    kind: str  # "sqlite" | "redis"
    config: dict[str, Any] = field(default_factory=dict)  # JSON-serialisable

    def open(self) -> TaskStore:
        if self.kind == "redis":
            return RedisStore(self.config["url"], prefix=self.config["prefix"])
        return SqliteStore(Path(self.config["path"]))


@pytest.fixture(params=["sqlite", "redis"])
def store_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreBackend]:
    if request.param == "sqlite":
        yield StoreBackend("sqlite", {"path": str(tmp_path / "store" / "tasks.sqlite3")})
        return
    url = request.getfixturevalue("redis_url")
    prefix = f"test:{uuid.uuid4().hex[:12]}:"
    yield StoreBackend("redis", {"url": url, "prefix": prefix})
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest_asyncio.fixture
async def store(store_backend: StoreBackend) -> AsyncIterator[TaskStore]:
    """A fresh, empty TaskStore; the same tests run once on SQLite and once on Redis."""
    s = store_backend.open()
    try:
        yield s
    finally:
        await s.close()
