"""Bounds on what a vector carries (issue 19): metadata within a request's own bounds.

An imported file, or a record written straight into the store, must not make any request's work grow with
what it holds: every metadata field is bounded at import and again when the vector is read back (a clear
error for the request, a concurrent /healthz unaffected).
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
from steering.model import LoadedModel
from steering.protocol import MAX_STOP_STRINGS
from steering.vector_errors import VectorImportError
from steering.vectors import TaskVector
from tests.api_helpers import assert_error, running_app, services_of, settings
from tests.store_fixtures import StoreBackend

OCTET = {"Content-Type": "application/octet-stream"}
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
