"""Bounds on what a vector carries (issue 19): metadata within a request's own bounds, norms within the model's.

An imported file, or a record written straight into the store, must not make any request's work grow with
what it holds: every metadata field is bounded at import and again when the vector is read back (a clear
error for the request, a concurrent /healthz unaffected). Tensors must be finite and of the model's own
scale (`steering.vectors.task_vector.check_norms`), and every vector the project itself computes still imports.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import torch
from fastapi import FastAPI
from safetensors.torch import save as st_save

from app.store import TaskRecord
from steering.methods import compute_vector
from steering.methods.capture import activation_scale, head_means
from steering.model.loading import LoadedModel, load_model
from steering.vectors.errors import VectorImportError
from steering.vectors.export import export_gguf
from steering.vectors.modes import MODES, mode_spec
from steering.vectors.task_vector import MAX_NORM_RATIO, ActivationScale, TaskVector, check_norms
from steering.wire.method_names import VectorMethod
from steering.wire.protocol import MAX_STOP_STRINGS, Demonstration
from tests.api_helpers import ANTONYMS, OCTET, assert_error, running_app, services_of, settings, task_body, wait_task
from tests.store_fixtures import StoreBackend

STALL_LIMIT_S = 1.0  # what /healthz may take while another request uses a hostile vector


def residual_vector(lm: LoadedModel, value: float | None = None) -> TaskVector:
    residual = torch.randn(lm.arch.num_layers, lm.arch.hidden_size, generator=torch.Generator().manual_seed(3))
    if value is not None:
        residual[1] = value
    return TaskVector(
        method="contrastive",
        mode="add_all",
        tensors={"residual": residual},
        layers=[1],
        default_strength=1.0,
        fingerprint=lm.fingerprint,
    )


def with_metadata(vector: TaskVector, **changes: Any) -> bytes:
    """The vector's file with metadata fields replaced as they are, past every check a writer would make."""
    meta = {**vector.metadata(), **changes}
    tensors = {name: tensor.contiguous() for name, tensor in vector.tensors.items()}
    return st_save(tensors, metadata={"steering": json.dumps(meta)})


def many_stops(count: int) -> dict[str, Any]:
    return {"stop": [f"s{i}" for i in range(count)], "delimiters": [], "max_words": 2}


def oversized_fields(vector: TaskVector) -> list[tuple[dict[str, Any], str]]:
    """(metadata changes, the field its error names): one past each bound."""
    template = vector.template.model_dump()
    return [
        ({"answer_end": many_stops(30_000)}, "answer_end.stop"),
        ({"answer_end": many_stops(MAX_STOP_STRINGS + 1)}, "answer_end.stop"),
        ({"answer_end": {"stop": ["x" * 257]}}, "answer_end.stop.0"),
        ({"answer_end": {"stop": [""]}}, "answer_end.stop.0"),
        ({"answer_end": {"delimiters": [","] * 100}}, "answer_end.delimiters"),
        ({"answer_end": {"max_tokens": 10**12}}, "answer_end.max_tokens"),
        ({"template": {**template, "example": "{input}{output}" + "x" * 9000}}, "template.example"),
        ({"template": {**template, "prefix": "x" * 9000}}, "template.prefix"),
        ({"template": {**template, "separator": "\n" * 300}}, "template.separator"),
        ({"options": {f"k{i}": "v" * 100 for i in range(1000)}}, "options"),
        ({"metrics": {"auto": {"candidates": [{"method": "icv"}] * 10_000}}}, "metrics"),
        ({"layers": list(range(2000))}, "layers"),
        ({"fingerprint": "f" * 300}, "fingerprint"),
        ({"num_demonstrations": 10**12}, "num_demonstrations"),
        ({"options": {"k": "v" * (2 << 20)}}, "the steering metadata has"),
    ]


def test_every_metadata_field_is_bounded(tiny_llama: LoadedModel) -> None:
    vector = residual_vector(tiny_llama)
    TaskVector.from_bytes(with_metadata(vector))  # unchanged, it reads
    for changes, field in oversized_fields(vector):
        with pytest.raises(VectorImportError, match=field.replace(".", r"\.")):
            TaskVector.from_bytes(with_metadata(vector, **changes))


def test_norms_are_bounded_by_the_model_scale() -> None:
    scale = ActivationScale(residual=torch.tensor([10.0, 20.0]), heads=torch.tensor([1.0, 2.0]))
    vector = TaskVector(
        method="soft_injection",
        mode="head_mix_last",
        tensors={"head_means": torch.zeros(2, 3, 4), "gate_logits": torch.full((2, 3), 1e30)},
        layers=[0],
        default_strength=1.0,
        fingerprint="fp",
    )
    vector.tensors["head_means"][1, 2, 0] = 2.0 * MAX_NORM_RATIO  # exactly the limit: accepted
    check_norms(vector, scale)
    vector.tensors["head_means"][1, 2, 0] = 1e30  # gate logits are not norms: only head means are bounded
    with pytest.raises(VectorImportError, match=r"head_means at layer 1 has norm 1e\+30.*\(2, measured"):
        check_norms(vector, scale)
    huge = residual_vector_for(torch.full((2, 5), 3e38))  # norms past float32 range are still figures
    with pytest.raises(VectorImportError, match=r"residual at layer 0 has norm 6\.708e\+38"):
        check_norms(huge, scale)


def residual_vector_for(residual: torch.Tensor) -> TaskVector:
    return TaskVector(
        method="contrastive",
        mode="add_all",
        tensors={"residual": residual},
        layers=[0],
        default_strength=1.0,
        fingerprint="fp",
    )


# ------------------------------------------------------------------------------------------------ HTTP


@pytest_asyncio.fixture(scope="module")
async def api(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    async with running_app(settings(tmp_path_factory.mktemp("bounds"))) as (app, client):
        yield app, client


async def test_imported_metadata_past_its_bounds_is_a_422_naming_the_field(api: tuple[FastAPI, Any]) -> None:
    app, client = api
    vector = residual_vector(services_of(app).lm)
    before = (await client.get("/v1/tasks")).json()["total"]
    for changes, field in [*oversized_fields(vector), ({"answer_end": many_stops(300_000)}, "characters")]:
        response = await client.post("/v1/tasks/import", content=with_metadata(vector, **changes), headers=OCTET)
        error = assert_error(response, 422, "invalid_vector")
        assert field in error["message"], (field, error)
    assert (await client.get("/v1/tasks")).json()["total"] == before  # nothing stored


FIGURES = {"dev_steered_exact": 0.5, "dev_zero_shot_exact": 0.1, "dev_few_shot_exact": 0.9}


@pytest.mark.parametrize(
    "metrics",
    [
        {**FIGURES, "auto": {"candidates": ["icv", 1, None]}},
        {**FIGURES, "auto": {"candidates": [{"dev_exact": 1.0}], "chose": ["x"]}},
        {**FIGURES, "auto": [1]},
        {**FIGURES, "auto": {"candidates": {"method": "icv"}}},
        {**FIGURES, "dev_size": "many", "held_out": True, "dev_few_shot_k": 2.5},
        {**FIGURES, "dev_size": 10**400, "held_out": True},
        {**FIGURES, "dev_steered_exact": 1e300, "dev_size": 10, "held_out": True},
    ],
)
async def test_imported_metrics_of_any_shape_never_break_reading_the_task(
    api: tuple[FastAPI, Any], metrics: dict[str, Any]
) -> None:
    """Metrics are free JSON within their bound; the verdict reads only what has the shape it expects."""
    app, client = api
    imported = await client.post(
        "/v1/tasks/import", content=with_metadata(residual_vector(services_of(app).lm), metrics=metrics), headers=OCTET
    )
    assert imported.status_code == 201, imported.text
    found = imported.json()["verdict"]  # none for figures that are not fractions
    assert found is None or found["rating"] == "below_few_shot", found
    assert (await client.get(f"/v1/tasks/{imported.json()['id']}")).status_code == 200
    assert (await client.get("/v1/tasks")).status_code == 200


@pytest.mark.parametrize("value", [1e30, 1e6])
async def test_vectors_far_beyond_the_model_scale_are_a_422_with_the_figures(
    api: tuple[FastAPI, Any], value: float, tmp_path: Path
) -> None:
    app, client = api
    svc = services_of(app)
    vector = residual_vector(svc.lm, value)
    gguf = tmp_path / "huge.gguf"
    export_gguf(vector, gguf, "llama")
    heads = TaskVector(
        method="soft_injection",
        mode="head_mix_last",
        tensors={
            "head_means": torch.zeros(svc.lm.arch.num_layers, svc.lm.arch.num_heads, svc.lm.arch.head_dim),
            "gate_logits": torch.zeros(svc.lm.arch.num_layers, svc.lm.arch.num_heads),
        },
        layers=[0],
        default_strength=1.0,
        fingerprint=svc.lm.fingerprint,
    )
    heads.tensors["head_means"][0, 1, 0] = value
    for body, name, layer, site in (
        (vector.to_bytes(), "residual", 1, "residual"),
        (gguf.read_bytes(), "residual", 1, "residual"),
        (heads.to_bytes(), "head_means", 0, "heads"),
    ):
        error = assert_error(await client.post("/v1/tasks/import", content=body, headers=OCTET), 422, "invalid_vector")
        message, scale = error["message"], float(getattr(svc.bounds.scale, site)[layer])
        assert f"{name} at layer {layer} has norm" in message, message
        assert f"({scale:.4g}, measured at start-up)" in message, message
        assert f"at most {MAX_NORM_RATIO:g} times" in message, message


def norm_ratio(vector: TaskVector, scale: ActivationScale) -> float:
    """The largest ratio of a row's norm to the model's norm at its layer, over the tensors `check_norms` bounds."""
    ratios = []
    for name, tensor in vector.tensors.items():
        reference = {"residual": scale.residual, "head_means": scale.heads, "answer_head_means": scale.heads}.get(name)
        if reference is not None:
            norms = tensor.double().norm(dim=-1)
            ratios.append(float(((norms if norms.dim() == 1 else norms.amax(-1)) / reference.double()).max()))
    return max(ratios, default=0.0)  # a KV prefix holds no activation row: `check_norms` bounds none of it


METHODS: tuple[VectorMethod, ...] = (
    "icv",
    "task_vector",
    "function_vector",
    "soft_injection",
    "context_tuning",
    "contrastive",
)
# Soft injection trains few steps; the others steer layer 1, which a GGUF control vector can hold (not layer 0).
FAST_OPTIONS: dict[str, dict[str, Any]] = {
    "soft_injection": {"steps": 12, "num_prompts": 6, "k_shot": 3},
    "context_tuning": {"k_shot": 2, "epochs": 2},
    **{method: {"layer": 1} for method in ("icv", "task_vector", "function_vector", "contrastive")},
}


def with_answer_mix(lm: LoadedModel, vector: TaskVector) -> TaskVector:
    """A `head_mix_answer` vector from a computed `head_mix_last` one and the model's real answer head means."""
    prompts = [f"Q: {a}\nA:" for a, _ in ANTONYMS]
    answers = [lm.tokenizer(f" {b}", add_special_tokens=False)["input_ids"] for _, b in ANTONYMS]
    tensors = {
        **vector.tensors,
        "answer_head_means": head_means(lm, prompts, answers).answer,
        "answer_gate_logits": torch.zeros_like(vector.tensors["gate_logits"]),
    }
    return TaskVector(vector.method, "head_mix_answer", tensors, vector.layers, 1.0, vector.fingerprint)


async def test_every_mode_round_trips_export_to_import_with_room(api: tuple[FastAPI, Any]) -> None:
    """What the project computes, it imports again: every method's vector as safetensors and (where its mode
    allows) GGUF, which covers every injection mode; their norms stay far below the limit (issue 19's report)."""
    app, client = api
    svc = services_of(app)
    imported_modes = set()

    async def round_trip(data: bytes) -> None:
        imported = await client.post("/v1/tasks/import", content=data, headers=OCTET)
        assert imported.status_code == 201, imported.text
        vector = TaskVector.from_bytes((await client.get(f"/v1/tasks/{imported.json()['id']}/vector")).content)
        imported_modes.add(vector.mode)
        assert norm_ratio(vector, svc.bounds.scale) < MAX_NORM_RATIO / 10, (vector.method, vector.mode)

    for method in METHODS:
        body = task_body(ANTONYMS, method=method, options=FAST_OPTIONS.get(method, {}))
        info = await wait_task(client, (await client.post("/v1/tasks", json=body)).json()["id"], timeout_s=300)
        assert info["status"] == "ready", info
        exported = (await client.get(f"/v1/tasks/{info['id']}/vector")).content
        vector = TaskVector.from_bytes(exported)
        await round_trip(exported)
        if mode_spec(vector.mode).gguf:
            params = {"format": "gguf", "drop_layer_zero": "true"}
            gguf = await client.get(f"/v1/tasks/{info['id']}/vector", params=params)
            assert gguf.status_code == 200, gguf.text
            await round_trip(gguf.content)
        if vector.mode == "head_mix_last":
            await round_trip(with_answer_mix(svc.lm, vector).to_bytes())
    assert imported_modes == set(MODES)


@pytest.mark.parametrize("model_type", ["gemma2", "gpt2", "olmo2"])
def test_computed_vectors_stay_far_below_the_norm_limit(model_type: str) -> None:
    """On other architectures too, every method's vector is a small multiple of the model's own scale."""
    lm = load_model(f"tiny:{model_type}")
    scale = activation_scale(lm)
    demos = [Demonstration(input=a, output=b) for a, b in ANTONYMS]
    for method in METHODS:
        vector = compute_vector(lm, demos, method, options=FAST_OPTIONS.get(method))
        if vector.mode == "head_mix_last":
            vector = with_answer_mix(lm, vector)
        assert norm_ratio(vector, scale) < MAX_NORM_RATIO / 10, (method, norm_ratio(vector, scale))


# ------------------------------------------------------------------------------------ read from the store


def backend_settings(backend: StoreBackend, tmp_path: Path) -> dict[str, Any]:
    if backend.kind == "redis":
        return {"redis_url": backend.config["url"], "redis_prefix": backend.config["prefix"], "data_dir": tmp_path}
    return {"data_dir": Path(backend.config["path"]).parent}


async def put_straight(app: FastAPI, data: bytes, answer_end: dict[str, Any]) -> str:
    """A ready imported task written into the store by hand (an older version, or a writer with store access)."""
    svc = services_of(app)
    task_id = f"task-hostile{len(data)}"
    record = TaskRecord(
        id=task_id,
        method="contrastive",
        status="ready",
        spec={"demonstrations": [], "template": {}, "options": {}, "imported_from": "safetensors"},
        fingerprint=svc.lm.fingerprint,
        created_at=time.time(),
        updated_at=time.time(),
        summary={"method": "contrastive", "layers": [1], "default_strength": 1.0, "answer_end": answer_end},
    )
    assert await svc.store.create(record, vector=data)
    return task_id


async def healthz_while(client: httpx.AsyncClient, work: asyncio.Task) -> float:
    """The slowest /healthz answer while `work` runs (the event loop's stall, if any)."""
    slowest = 0.0
    while not work.done():
        start = time.perf_counter()
        assert (await client.get("/healthz")).status_code == 200
        slowest = max(slowest, time.perf_counter() - start)
        await asyncio.sleep(0.005)
    return slowest


@pytest.mark.timeout(60)
async def test_a_stored_vector_past_the_bounds_is_refused_at_read_without_stalling(
    store_backend: StoreBackend, tmp_path: Path
) -> None:
    config = settings(tmp_path, **backend_settings(store_backend, tmp_path))
    async with running_app(config) as (app, client):
        vector = residual_vector(services_of(app).lm)
        stops = many_stops(30_000)
        task_id = await put_straight(app, with_metadata(vector, answer_end=stops), stops)
        steering = [{"task": task_id, "strength": 1.0}] * 2
        body = {"input": "hot", "steering": steering, "max_new_tokens": 4}
        generation = asyncio.create_task(client.post("/v1/generate", json=body))
        assert await healthz_while(client, generation) < STALL_LIMIT_S
        error = assert_error(await generation, 409, "task_not_ready")
        assert "answer_end.stop" in error["message"] and "import it again" in error["message"], error
        info = (await client.get(f"/v1/tasks/{task_id}")).json()
        assert info["status"] == "failed" and "answer_end.stop" in info["error"], info
        huge = residual_vector(services_of(app).lm, 1e30)
        huge_id = await put_straight(app, huge.to_bytes(), {})
        error = assert_error(
            await client.post("/v1/generate", json={"prompt": "hot", "steering": [{"task": huge_id}]}), 409
        )
        assert "residual at layer 1 has norm" in error["message"] and "residual norm there" in error["message"], error
