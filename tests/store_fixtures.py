"""Fixtures for the task store: a real throwaway redis-server, and `store` over both backends.

Use from a conftest with `pytest_plugins = ["tests.store_fixtures"]` (top-level conftest only)
or `from tests.store_fixtures import redis_url, store, store_backend  # noqa: F401`.
Set STEER_TEST_REDIS_URL to run against an existing Redis instead of starting one.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis

from app.store import RedisStore, SqliteStore, TaskStore

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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real redis-server started for this test session (killed at the end)."""
    external = os.environ.get("STEER_TEST_REDIS_URL")
    if external:
        yield external
        return
    binary = redis_server_binary()
    workdir = tmp_path_factory.mktemp("redis")
    log_path = workdir / "redis.log"
    for _attempt in range(3):  # the free port may be taken between probing and binding
        port = free_port()
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                    "--dir",
                    str(workdir),
                ],
                cwd=workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and proc.poll() is None and not _answers_ping(port):
            time.sleep(0.05)
        if proc.poll() is None and _answers_ping(port):
            break
        _stop(proc)
    else:
        pytest.fail(f"redis-server did not start; log:\n{log_path.read_text(errors='replace')}", pytrace=False)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(proc)


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
