"""`steer` starts without torch and transformers: they take seconds to import, and only `steer eval` needs them.

Each check runs in a fresh interpreter, where `sys.modules` shows exactly what the commands imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from steering.client import Client
from tests.conftest import ServerProcess, start_server

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers")

# Runs `steer` with each argument list (a JSON list of lists in argv[1]) and prints the heavy modules imported.
PROBE = """
import json, sys
from typer.testing import CliRunner
import steering.cli

runner = CliRunner()
for args in json.loads(sys.argv[1]):
    result = runner.invoke(steering.cli.app, args, catch_exceptions=False)
    assert result.exit_code == 0, (args, result.output)
print(json.dumps(sorted(name for name in {heavy} if name in sys.modules)))
""".replace("{heavy}", repr(HEAVY))


def heavy_modules_after(commands: list[list[str]], env: dict[str, str] | None = None) -> list[str]:
    completed = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(commands)],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.splitlines()[-1])


def test_help_imports_neither_torch_nor_transformers() -> None:
    assert heavy_modules_after([["--help"], ["tasks", "--help"], ["eval", "--help"], ["generate", "--help"]]) == []


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("cli-startup-server")
    proc = start_server({"STEER_MODEL": "tiny:llama", "STEER_DATA_DIR": str(folder / "data")}, folder / "server.log")
    yield proc
    proc.stop()


def test_commands_over_http_import_neither_torch_nor_transformers(server: ServerProcess, tmp_path: Path) -> None:
    register = ["--json", "tasks", "register", "examples/antonyms.txt", "-m", "task_vector", "--name", "startup"]
    env = {"STEER_URL": server.url, "STEER_API_KEY": ""}
    assert heavy_modules_after([register], env) == []
    with Client(server.url) as client:
        [task] = [t for t in client.list() if t.name == "startup"]
    commands = [
        ["tasks", "list"],
        ["tasks", "show", task.id],
        ["generate", "--task", f"{task.id}:1.5", "--input", "clean", "--max-new-tokens", "3"],
        ["generate", "--task", task.id, "--input", "clean", "--max-new-tokens", "3", "--stream"],
        ["export", task.id, "-o", str(tmp_path / "startup.safetensors")],
        ["import", str(tmp_path / "startup.safetensors"), "--name", "startup copy"],
    ]
    assert heavy_modules_after(commands, env) == []
