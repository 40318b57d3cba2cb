"""The service as a real child process (`python -m app` on a free port), for the tests and the benchmarks.

`start_server_process` returns once `/readyz` answers 200, or raises `ServerStartError` with the server's log.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


class ServerStartError(RuntimeError):
    """The server exited, or did not become ready in time; the message ends with its log."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    url: str
    proc: subprocess.Popen
    log_path: Path

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM (the server drains), then SIGKILL after `timeout_s`."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, chars: int = 3000) -> str:
        return self.log()[-chars:]


def start_server_process(
    env: Mapping[str, str],
    log_path: Path,
    timeout_s: float = 120.0,
    *,
    unset: Iterable[str] = (),
    log_chars: int | None = None,
) -> ServerProcess:
    """Run `python -m app` with this process's environment plus `env` (less the `unset` names) on a free port.

    Returns once /readyz answers 200. `ServerStartError` otherwise, with the log (its last `log_chars`
    characters when given).
    """
    port = free_port()
    full_env = {
        **os.environ,
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
        "STEER_HOST": "127.0.0.1",
        "STEER_PORT": str(port),
        **env,
    }
    for name in unset:
        full_env.pop(name, None)
    with open(log_path, "ab") as log:  # the child keeps its own handle for its whole life
        proc = subprocess.Popen([sys.executable, "-m", "app"], cwd=ROOT, env=full_env, stdout=log, stderr=log)
    server = ServerProcess(f"http://127.0.0.1:{port}", proc, log_path)

    def failed(reason: str) -> ServerStartError:
        log_text = server.log() if log_chars is None else server.log_tail(log_chars)
        return ServerStartError(f"{reason}:\n{log_text}")

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise failed(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=2.0).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop()
    raise failed(f"server did not become ready in {timeout_s} s")
