"""The Python client (`steering.client`) against a real server process, sync and async."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from steering.client import (
    AsyncClient,
    BadRequest,
    Client,
    Conflict,
    NotFound,
    NotReady,
    Overloaded,
    SSEParser,
    SteeringAPIError,
    Unauthorized,
    WaitTimeout,
    api_error,
    steering_entries,
)
from steering.wire.protocol import Demonstration, GenerateResponse, SteeringEntry, TaskInfo
from tests.conftest import ServerProcess, start_server

DEMOS_TEXT = "hot -> cold\nbig -> small\nfast -> slow\nup -> down\nday -> night\nin -> out\n"
SLOW = {"steps": 5000, "eval_every": 1000, "patience": 1000}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("client-server")
    proc = start_server({"STEER_MODEL": "tiny:llama", "STEER_DATA_DIR": str(folder / "data")}, folder / "server.log")
    yield proc
    proc.stop()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[Client]:
    with Client(server.url, api_key="") as c:
        yield c


@pytest.fixture(scope="module")
def task(server: ServerProcess) -> TaskInfo:
    with Client(server.url, api_key="") as c:
        return c.register(DEMOS_TEXT, method="task_vector", name="antonyms", wait=True, timeout=60)


# ------------------------------------------------------------------------------------------- sync


def test_register_waits_until_ready(client: Client, task: TaskInfo) -> None:
    assert task.status == "ready" and task.name == "antonyms" and task.method == "task_vector"
    assert task.num_demonstrations == 6 and task.layers and task.default_strength is not None
    seen: list[TaskInfo] = []
    again = client.register(DEMOS_TEXT, method="task_vector", wait=True, on_progress=seen.append)
    assert again.id == task.id and seen and seen[-1].status == "ready"
    assert client.get(task.id) == again
    assert task.id in [t.id for t in client.list()]


def test_register_accepts_pairs_dicts_models_and_files(client: Client, task: TaskInfo, tmp_path: Path) -> None:
    pairs = [tuple(line.split(" -> ")) for line in DEMOS_TEXT.splitlines()]
    path = tmp_path / "demos.jsonl"
    path.write_text("\n".join(f'{{"input": "{a}", "output": "{b}"}}' for a, b in pairs))
    for demos in (
        pairs,
        [{"input": a, "output": b} for a, b in pairs],
        [Demonstration(input=a, output=b) for a, b in pairs],
        path,
    ):
        info = client.register(demos, method="task_vector")
        assert info.id == task.id  # the same content: the same task


def test_generate_and_invariants(client: Client, task: TaskInfo) -> None:
    plain = client.generate(input="tall", max_new_tokens=8)
    assert isinstance(plain, GenerateResponse) and plain.steering == []
    zero = client.generate(input="tall", steering=[(task.id, 0.0)], max_new_tokens=8)
    assert zero.text == plain.text  # strength 0 is the plain model
    steered = client.generate(input="tall", steering=task.id, max_new_tokens=8)
    assert steered.steering[0].task == task.id and steered.steering[0].strength == task.default_strength
    assert steered.usage.completion_tokens <= 8
    by_entry = client.generate(input="tall", steering=[SteeringEntry(task=task.id)], max_new_tokens=8)
    by_dict = client.generate(input="tall", steering=[{"task": task.id}], max_new_tokens=8)
    assert by_entry.text == by_dict.text == steered.text
    raw = client.generate("Q: tall\nA:", steering=[(task.id, 1.0)], max_new_tokens=4, stop=["\n"])
    assert raw.usage.prompt_tokens > 0


def test_stream_generate_matches_generate(client: Client, task: TaskInfo) -> None:
    full = client.generate(input="tall", steering=[(task.id, 1.0)], max_new_tokens=10)
    done: list[GenerateResponse] = []
    pieces = list(
        client.stream_generate(input="tall", steering=[(task.id, 1.0)], max_new_tokens=10, on_done=done.append)
    )
    assert "".join(pieces) == full.text
    assert len(done) == 1 and done[0].text == full.text and done[0].usage == full.usage


def test_errors_are_typed(client: Client, task: TaskInfo) -> None:
    with pytest.raises(NotFound) as info:
        client.get("task-nope")
    assert info.value.status == 404 and info.value.type == "not_found" and "task-nope" in info.value.message
    with pytest.raises(NotFound):
        client.generate(input="x", steering=["task-nope"])
    with pytest.raises(BadRequest) as bad:
        client.register(DEMOS_TEXT, method="task_vector", options={"no_such_option": 1})
    assert bad.value.status == 422 and bad.value.type == "invalid_options"
    with pytest.raises(BadRequest):
        client.generate(input="x", steering=[(task.id, 1e6)])
    with pytest.raises(ValueError):  # checked by the shared protocol models before sending
        client.generate("a prompt", input="an input")


def test_not_ready_and_wait_timeout(client: Client) -> None:
    pending = client.register(DEMOS_TEXT, method="soft_injection", options=SLOW)
    try:
        assert pending.status in ("pending", "running")
        with pytest.raises(NotReady) as info:
            client.generate(input="x", steering=[pending.id])
        assert isinstance(info.value, Conflict) and info.value.status == 409
        with pytest.raises(WaitTimeout) as waited:
            client.wait(pending.id, timeout=0.2, poll_interval=0.05)
        assert isinstance(waited.value, TimeoutError) and waited.value.task.id == pending.id
        with pytest.raises(NotReady):
            client.export_vector(pending.id)
    finally:
        client.delete(pending.id)
    with pytest.raises(NotFound):
        client.get(pending.id)


def test_delete(client: Client) -> None:
    info = client.register("a -> b\nc -> d\ne -> f", method="task_vector", wait=True)
    client.delete(info.id)
    assert info.id not in [t.id for t in client.list()]
    with pytest.raises(NotFound):
        client.delete(info.id)


def test_export_and_import(client: Client, task: TaskInfo, tmp_path: Path) -> None:
    path = tmp_path / "antonyms.safetensors"
    data = client.export_vector(task.id, path=path)
    assert path.read_bytes() == data
    imported = client.import_vector(path, name="copy")
    assert imported.status == "ready" and imported.name == "copy"
    assert client.import_vector(data).id == imported.id
    same = client.generate(input="tall", steering=[imported.id], max_new_tokens=8)
    assert same.text == client.generate(input="tall", steering=[task.id], max_new_tokens=8).text
    with pytest.raises(BadRequest) as info:
        client.export_vector(task.id, "gguf")
    assert "safetensors only" in info.value.message


def test_tasks_by_name(client: Client, task: TaskInfo) -> None:
    assert client.get("antonyms").id == task.id
    by_name = client.generate(input="tall", steering=[("antonyms", 1.0)], max_new_tokens=8)
    assert by_name.text == client.generate(input="tall", steering=[(task.id, 1.0)], max_new_tokens=8).text
    other = client.register("p -> q\nr -> s\nt -> u", method="task_vector", name="two words", wait=True, timeout=60)
    with pytest.raises(Conflict) as taken:
        client.register("p -> q\nr -> s", method="task_vector", name="antonyms")
    assert taken.value.type == "name_taken" and task.id in taken.value.message
    with pytest.raises(Conflict):
        client.rename(other.id, "antonyms")
    moved = client.rename("two words", "antonyms", take_name=True)
    assert moved.id == other.id and moved.name == "antonyms" and client.get(task.id).name is None
    odd = client.rename("antonyms", "what? #1 at 100%")  # any printable name travels in a path
    assert odd.id == other.id and client.get("what? #1 at 100%").id == other.id
    assert client.rename(task.id, "antonyms").name == "antonyms"
    client.delete("what? #1 at 100%")
    with pytest.raises(NotFound):
        client.get(other.id)
    with pytest.raises(ValueError, match="task ids do"):  # checked before sending, as every request body is
        client.rename(task.id, "task-looks-like-an-id")


def test_environment_defaults(server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEER_URL", server.url + "/")
    monkeypatch.setenv("STEER_API_KEY", "from-env")
    with Client() as c:
        assert c.base_url == server.url and c.api_key == "from-env"
        assert c.ready()["status"] == "ready"


def test_unauthorized(server_factory) -> None:
    keyed = server_factory(STEER_API_KEYS="sesame")
    with Client(keyed.url, api_key="") as anonymous, pytest.raises(Unauthorized) as info:
        anonymous.list()
    assert info.value.status == 401
    with Client(keyed.url, api_key="wrong") as wrong, pytest.raises(Unauthorized):
        wrong.list()
    with Client(keyed.url, api_key="sesame") as good:
        assert good.list() == []
        task = good.register("a -> b\nc -> d\ne -> f", method="task_vector", wait=True, timeout=60)
        assert [t.id for t in good.list()] == [task.id]


# ------------------------------------------------------------------------------------------- async


async def test_async_client(server: ServerProcess, task: TaskInfo, tmp_path: Path) -> None:
    async with AsyncClient(server.url, api_key="") as client:
        info = await client.register(DEMOS_TEXT, method="task_vector", wait=True, timeout=60)
        assert info.id == task.id
        assert (await client.get(task.id)).status == "ready"
        assert task.id in [t.id for t in await client.list()]
        full = await client.generate(input="tall", steering=[(task.id, 1.0)], max_new_tokens=10)
        done: list[GenerateResponse] = []
        pieces = [
            p
            async for p in client.stream_generate(
                input="tall", steering=[(task.id, 1.0)], max_new_tokens=10, on_done=done.append
            )
        ]
        assert "".join(pieces) == full.text and done[0].text == full.text
        data = await client.export_vector(task.id, path=tmp_path / "v.safetensors")
        copy = await client.import_vector(tmp_path / "v.safetensors", name="async copy")
        assert copy.status == "ready" and (await client.export_vector(copy.id)) == data
        with pytest.raises(NotFound):
            await client.get("task-nope")
        assert (await client.get("antonyms")).id == task.id
        assert (await client.rename(copy.id, "async copy 2")).name == "async copy 2"
        other = await client.register("p -> q\nr -> s\nt -> u", method="task_vector", wait=True, timeout=60)
        await client.delete(other.id)
        with pytest.raises(NotFound):
            await client.get(other.id)


# ------------------------------------------------------------------------------------------- units


def test_sse_parser() -> None:
    parser = SSEParser()
    lines = [
        ": ping - 2024-01-01",
        "",
        "event: token",
        'data: {"text": "he"}',
        "",
        "event: done",
        "data: line one",
        "data: line two",
        "",
        "data: no event name",
        "",
    ]
    events = [e for e in (parser.feed(line) for line in lines) if e is not None]
    assert [(e.event, e.data) for e in events] == [
        ("token", '{"text": "he"}'),
        ("done", "line one\nline two"),
        ("message", "no event name"),
    ]


@pytest.mark.parametrize(
    ("status", "body", "cls", "kind"),
    [
        (404, {"error": {"type": "not_found", "message": "task 'x' not found"}}, NotFound, "not_found"),
        (409, {"error": {"type": "task_not_ready", "message": "pending"}}, NotReady, "task_not_ready"),
        (409, {"error": {"type": "model_mismatch", "message": "other model"}}, Conflict, "model_mismatch"),
        (422, {"error": {"type": "invalid_request", "message": "bad"}}, BadRequest, "invalid_request"),
        (401, {"error": {"type": "unauthorized", "message": "key"}}, Unauthorized, "unauthorized"),
        (503, {"error": {"type": "store_unavailable", "message": "down"}}, Overloaded, "store_unavailable"),
        (500, None, SteeringAPIError, "http_error"),
    ],
)
def test_api_error_mapping(status: int, body, cls: type, kind: str) -> None:
    response = httpx.Response(status, json=body, headers={"Retry-After": "2"}) if body else httpx.Response(status)
    exc = api_error(response)
    assert type(exc) is cls and exc.status == status and exc.type == kind
    if isinstance(exc, Overloaded):
        assert exc.retry_after == 2.0


def test_steering_entries() -> None:
    assert steering_entries(None) == []
    assert steering_entries("t") == [SteeringEntry(task="t")]
    assert steering_entries([("t", -1.5), {"task": "u", "layers": [1]}]) == [
        SteeringEntry(task="t", strength=-1.5),
        SteeringEntry(task="u", layers=[1]),
    ]
