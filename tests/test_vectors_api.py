"""Export and import of vectors over HTTP: safetensors and GGUF round trips against a real server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from steering.model.loading import LoadedModel
from steering.vectors.export import GGUF_METHODS, export_gguf, read_gguf_directions
from steering.vectors.modes import GGUF_EXPORTABLE_MODES
from steering.vectors.task_vector import TaskVector
from steering.wire.protocol import Template
from tests.api_helpers import OCTET
from tests.conftest import ServerProcess, start_server

DEMOS = [
    {"input": a, "output": b}
    for a, b in [("hot", "cold"), ("big", "small"), ("fast", "slow"), ("up", "down"), ("day", "night"), ("in", "out")]
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("vectors-server")
    proc = start_server({"STEER_MODEL": "tiny:llama", "STEER_DATA_DIR": str(folder / "data")}, folder / "server.log")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def register_ready(http: httpx.Client, method: str = "task_vector", **extra) -> str:
    created = http.post("/v1/tasks", json={"demonstrations": DEMOS, "method": method, **extra})
    assert created.status_code in (200, 202), created.text
    task_id = created.json()["id"]
    for _ in range(300):
        info = http.get(f"/v1/tasks/{task_id}").json()
        if info["status"] in ("ready", "failed"):
            break
        time.sleep(0.1)
    assert info["status"] == "ready", info
    return task_id


def generate(http: httpx.Client, task_id: str | None, strength: float | None = None, text: str = "tall") -> str:
    steering = [] if task_id is None else [{"task": task_id, "strength": strength}]
    response = http.post("/v1/generate", json={"input": text, "steering": steering, "max_new_tokens": 8})
    assert response.status_code == 200, response.text
    return response.json()["text"]


def residual_vector(lm: LoadedModel, layers: list[int], strength: float = 2.0, seed: int = 5) -> TaskVector:
    """A hand-made contrastive-style vector (one residual row per layer, added at every position)."""
    gen = torch.Generator().manual_seed(seed)
    residual = torch.zeros(lm.arch.num_layers, lm.arch.hidden_size)
    for layer in layers:
        residual[layer] = torch.randn(lm.arch.hidden_size, generator=gen) * 4.0
    return TaskVector(
        method="contrastive",
        mode="add_all",
        tensors={"residual": residual},
        layers=layers,
        default_strength=strength,
        fingerprint=lm.fingerprint,
        template=Template(),
    )


def import_bytes(http: httpx.Client, data: bytes, **params: str) -> httpx.Response:
    return http.post("/v1/tasks/import", content=data, params=params, headers=OCTET)


# ------------------------------------------------------------------------------------------ safetensors


def test_safetensors_export_is_the_stored_vector_and_imports_back(http: httpx.Client, server: ServerProcess) -> None:
    task_id = register_ready(http)
    response = http.get(f"/v1/tasks/{task_id}/vector", params={"format": "safetensors"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert task_id in response.headers["content-disposition"]
    vector = TaskVector.from_bytes(response.content)
    assert vector.method == "task_vector"
    assert vector.fingerprint == http.get("/readyz").json()["fingerprint"]
    assert vector.num_demonstrations == len(DEMOS)

    imported = import_bytes(http, response.content, name="copy")
    assert imported.status_code == 201, imported.text
    info = imported.json()
    assert info["status"] == "ready" and info["name"] == "copy" and info["id"] != task_id
    assert imported.headers["location"] == f"/v1/tasks/{info['id']}"
    assert info["method"] == "task_vector" and info["layers"] == vector.layers
    assert info["default_strength"] == vector.default_strength
    # The imported task steers exactly like the original, at its default strength and at others.
    for strength in (None, 0.5):
        assert generate(http, info["id"], strength) == generate(http, task_id, strength)
    # Bit-identical on the way back out.
    again = http.get(f"/v1/tasks/{info['id']}/vector")
    assert again.content == response.content


def test_importing_the_same_vector_twice_gives_the_same_task(http: httpx.Client) -> None:
    task_id = register_ready(http, options={"seed": 11})
    data = http.get(f"/v1/tasks/{task_id}/vector").content
    first = import_bytes(http, data, format="safetensors")
    second = import_bytes(http, data, format="safetensors")
    assert first.status_code == 201 and second.status_code == 200
    assert first.json()["id"] == second.json()["id"]
    listed = [t["id"] for t in http.get("/v1/tasks").json()["tasks"]]
    assert listed.count(first.json()["id"]) == 1


def test_a_vector_from_another_model_is_refused(http: httpx.Client, tiny_llama: LoadedModel) -> None:
    vector = residual_vector(tiny_llama, [1])
    vector.fingerprint = "tiny:llama@0000000000000000"
    response = import_bytes(http, vector.to_bytes())
    assert response.status_code == 409
    assert response.json()["error"]["type"] == "model_mismatch"


@pytest.mark.parametrize("body", [b"", b"not a vector at all", b"\x08\x00\x00\x00\x00\x00\x00\x00{}      "])
def test_garbage_is_a_422(http: httpx.Client, body: bytes) -> None:
    response = import_bytes(http, body)
    assert response.status_code == 422
    assert response.json()["error"]["type"] == "invalid_vector"


def test_task_vector_exports_as_safetensors_only(http: httpx.Client) -> None:
    task_id = register_ready(http)
    response = http.get(f"/v1/tasks/{task_id}/vector", params={"format": "gguf"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["type"] == "not_exportable" and "safetensors only" in error["message"]
    # why this one cannot, and which can
    assert "replace_last" in error["message"] and "no additive form" in error["message"]
    assert all(name in error["message"] for name in (*GGUF_EXPORTABLE_MODES, *GGUF_METHODS))


def test_head_level_vector_imports_and_refuses_gguf(http: httpx.Client, tiny_llama: LoadedModel) -> None:
    arch = tiny_llama.arch
    gen = torch.Generator().manual_seed(2)
    vector = TaskVector(
        method="soft_injection",
        mode="head_mix_last",
        tensors={
            "head_means": torch.randn(arch.num_layers, arch.num_heads, arch.head_dim, generator=gen),
            "gate_logits": torch.randn(arch.num_layers, arch.num_heads, generator=gen),
        },
        layers=[0, 1],
        default_strength=1.0,
        fingerprint=tiny_llama.fingerprint,
    )
    imported = import_bytes(http, vector.to_bytes())
    assert imported.status_code == 201, imported.text
    task_id = imported.json()["id"]
    generate(http, task_id)
    response = http.get(f"/v1/tasks/{task_id}/vector", params={"format": "gguf"})
    assert response.status_code == 422
    assert "safetensors only" in response.json()["error"]["message"]


def test_wrong_shapes_with_the_right_fingerprint_are_refused(http: httpx.Client, tiny_llama: LoadedModel) -> None:
    vector = residual_vector(tiny_llama, [1])
    vector.tensors["residual"] = torch.zeros(tiny_llama.arch.num_layers, tiny_llama.arch.hidden_size + 1)
    response = import_bytes(http, vector.to_bytes())
    assert response.status_code == 422
    assert "shape" in response.json()["error"]["message"]


def test_export_of_unknown_or_unready_task(http: httpx.Client) -> None:
    assert http.get("/v1/tasks/task-nope/vector").status_code == 404
    assert http.get("/v1/tasks/task-nope/vector", params={"format": "xml"}).status_code == 422
    slow = {"steps": 5000, "eval_every": 1000, "patience": 1000}
    created = http.post("/v1/tasks", json={"demonstrations": DEMOS, "method": "soft_injection", "options": slow})
    task_id = created.json()["id"]
    try:
        response = http.get(f"/v1/tasks/{task_id}/vector")
        assert response.status_code == 409
        assert response.json()["error"]["type"] == "task_not_ready"
    finally:
        http.delete(f"/v1/tasks/{task_id}")


# ------------------------------------------------------------------------------------------------ GGUF


def test_gguf_round_trip_generates_like_the_original(http: httpx.Client, tiny_llama: LoadedModel) -> None:
    original = residual_vector(tiny_llama, [1], strength=2.0)
    first = import_bytes(http, original.to_bytes(), name="original")
    assert first.status_code == 201, first.text
    original_id = first.json()["id"]
    steered = generate(http, original_id)
    assert steered != generate(http, None), "the hand-made vector should change the output"

    gguf = http.get(f"/v1/tasks/{original_id}/vector", params={"format": "gguf"})
    assert gguf.status_code == 200, gguf.text
    assert gguf.content[:4] == b"GGUF"
    back = import_bytes(http, gguf.content, name="from gguf")  # format guessed from the magic bytes
    assert back.status_code == 201, back.text
    info = back.json()
    assert info["method"] == "contrastive" and info["layers"] == [1] and info["default_strength"] == 1.0
    # GGUF rows carry the default strength: the copy at 1.0 is the original at 2.0.
    assert generate(http, info["id"]) == steered
    assert generate(http, info["id"], 0.5) == generate(http, original_id, 1.0)


def test_gguf_written_by_the_library_imports(http: httpx.Client, tiny_llama: LoadedModel, tmp_path: Path) -> None:
    vector = residual_vector(tiny_llama, [1], strength=1.5, seed=9)
    path = tmp_path / "v.gguf"
    export_gguf(vector, path, "llama")
    response = import_bytes(http, path.read_bytes(), format="gguf")
    assert response.status_code == 201, response.text
    task_id = response.json()["id"]
    reference = import_bytes(http, vector.to_bytes()).json()["id"]
    assert generate(http, task_id) == generate(http, reference)
    # and it exports again to the same directions
    out = tmp_path / "out.gguf"
    out.write_bytes(http.get(f"/v1/tasks/{task_id}/vector", params={"format": "gguf"}).content)
    hint, directions = read_gguf_directions(out)
    assert hint == "llama" and sorted(directions) == [1]
    np.testing.assert_allclose(directions[1], (vector.tensors["residual"][1] * 1.5).numpy(), rtol=1e-6)


def test_gguf_for_another_model_is_refused(http: httpx.Client, tiny_llama: LoadedModel, tmp_path: Path) -> None:
    vector = residual_vector(tiny_llama, [1])
    wrong_family = tmp_path / "gpt2.gguf"
    export_gguf(vector, wrong_family, "gpt2")
    response = import_bytes(http, wrong_family.read_bytes())
    assert response.status_code == 409
    assert response.json()["error"]["type"] == "model_mismatch"
    assert "gpt2" in response.json()["error"]["message"]

    big = TaskVector(
        method="contrastive",
        mode="add_all",
        tensors={"residual": torch.ones(tiny_llama.arch.num_layers + 3, tiny_llama.arch.hidden_size * 2)},
        layers=[tiny_llama.arch.num_layers + 1],
        default_strength=1.0,
        fingerprint=tiny_llama.fingerprint,
    )
    too_big = tmp_path / "big.gguf"
    export_gguf(big, too_big, "llama")
    response = import_bytes(http, too_big.read_bytes())
    assert response.status_code == 409
    assert "layers" in response.json()["error"]["message"] or "hidden size" in response.json()["error"]["message"]


def test_drop_layer_zero(http: httpx.Client, tiny_llama: LoadedModel) -> None:
    vector = residual_vector(tiny_llama, [0, 1])
    task_id = import_bytes(http, vector.to_bytes()).json()["id"]
    refused = http.get(f"/v1/tasks/{task_id}/vector", params={"format": "gguf"})
    assert refused.status_code == 422 and "layer 0" in refused.json()["error"]["message"]
    dropped = http.get(f"/v1/tasks/{task_id}/vector", params={"format": "gguf", "drop_layer_zero": "true"})
    assert dropped.status_code == 200 and dropped.content[:4] == b"GGUF"


# ------------------------------------------------------------------------------------------------ auth


def test_owner_rules_apply_to_vectors(server_factory, tiny_llama: LoadedModel) -> None:
    keyed = server_factory(STEER_API_KEYS="alpha,beta")
    data = residual_vector(tiny_llama, [1]).to_bytes()
    with httpx.Client(base_url=keyed.url, timeout=60) as anon:
        assert import_bytes(anon, data).status_code == 401
    alpha = httpx.Client(base_url=keyed.url, timeout=60, headers={"Authorization": "Bearer alpha"})
    beta = httpx.Client(base_url=keyed.url, timeout=60, headers={"Authorization": "Bearer beta"})
    with alpha, beta:
        mine = import_bytes(alpha, data)
        assert mine.status_code == 201
        task_id = mine.json()["id"]
        assert alpha.get(f"/v1/tasks/{task_id}/vector").content == data
        assert beta.get(f"/v1/tasks/{task_id}/vector").status_code == 404
        theirs = import_bytes(beta, data)
        assert theirs.status_code == 201 and theirs.json()["id"] != task_id  # the id hashes the owner too
        assert anon_status(keyed.url, f"/v1/tasks/{task_id}/vector") == 401


def anon_status(url: str, path: str) -> int:
    return httpx.get(url + path, timeout=30).status_code


def test_import_and_export_by_name(http: httpx.Client) -> None:
    task_id = register_ready(http, name="imp-src", options={"seed": 61})
    exported = http.get("/v1/tasks/imp-src/vector")  # by name: the file of the task that has it
    assert exported.status_code == 200 and task_id in exported.headers["content-disposition"]
    assert exported.content == http.get(f"/v1/tasks/{task_id}/vector").content

    taken = import_bytes(http, exported.content, name="imp-src")
    assert taken.status_code == 409 and taken.json()["error"]["type"] == "name_taken", taken.text
    assert taken.json()["error"]["task"] == task_id
    refused = import_bytes(http, exported.content, name="task-0001")
    assert refused.status_code == 422 and refused.json()["error"]["type"] == "invalid_name", refused.text
    copy = import_bytes(http, exported.content, name="imp-copy")
    assert copy.status_code == 201 and copy.json()["name"] == "imp-copy", copy.text
    again = import_bytes(http, exported.content, name="imp-copy 2")  # the same file again: renamed, as a repost is
    assert again.status_code == 200 and again.json()["id"] == copy.json()["id"]
    assert again.json()["name"] == "imp-copy 2"
    assert http.get("/v1/tasks/imp-copy 2").json()["id"] == copy.json()["id"]
    for ref in ("imp-copy 2", "imp-src"):
        assert http.delete(f"/v1/tasks/{ref}").status_code == 204
