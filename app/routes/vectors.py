"""Vectors that leave and enter the service: export a task's vector, import one as a ready task.

- `GET /v1/tasks/{id}/vector?format=safetensors` answers the stored bytes as they are (any method);
  `format=gguf` writes a llama.cpp / repeng control vector (residual additive modes only: 422 otherwise).
- `POST /v1/tasks/import?format=gguf|safetensors&name=...` takes the file as the raw body and creates a
  ready task. A safetensors vector carries its model fingerprint, which must be this server's (409). A GGUF
  carries none: it gets this server's fingerprint after its layers, hidden size and model hint are checked.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path
from typing import Literal

import numpy as np
from fastapi import APIRouter, Depends, Query, Request, Response
from safetensors import SafetensorError

from app.errors import ApiError
from app.jobs import vector_summary
from app.services import Services, owner, services
from app.store import TaskRecord
from app.tasks import task_info
from steering.export import ExportError, VectorImportError, export_gguf, import_gguf, read_gguf_directions
from steering.model import LoadedModel
from steering.protocol import TaskInfo
from steering.vectors import TaskVector

router = APIRouter(prefix="/v1/tasks", tags=["vectors"])

VectorFormat = Literal["safetensors", "gguf"]
GGUF_MAGIC = b"GGUF"
MEDIA_TYPES = {"safetensors": "application/octet-stream", "gguf": "application/octet-stream"}


# ------------------------------------------------------------------------------------------- export


@router.get(
    "/{task_id}/vector", response_class=Response, responses={200: {"content": {"application/octet-stream": {}}}}
)
async def export_vector(
    task_id: str,
    format: VectorFormat = Query("safetensors", description="safetensors (any method) or gguf (additive only)."),
    drop_layer_zero: bool = Query(False, description="GGUF: leave out layer 0, which llama.cpp cannot steer."),
    svc: Services = Depends(services),
    who: str | None = Depends(owner),
) -> Response:
    record = await svc.tasks.get(task_id, who)
    if record.status != "ready":
        raise ApiError(409, "task_not_ready", f"task {task_id!r} is {record.status}", status=record.status)
    data = await svc.store.get_vector(task_id)
    if data is None:
        raise ApiError(409, "task_not_ready", f"task {task_id!r} has no vector stored yet")
    if format == "gguf":
        data = _to_gguf(TaskVector.from_bytes(data), model_hint(svc.lm), drop_layer_zero)
    filename = f"{task_id}.{format}"
    return Response(
        content=data,
        media_type=MEDIA_TYPES[format],
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def model_hint(lm: LoadedModel) -> str:
    """What a GGUF control vector names as its model: the config's model type, as repeng writes it."""
    return str(getattr(lm.model.config, "model_type", None) or lm.arch.family)


def _to_gguf(vector: TaskVector, hint: str, drop_layer_zero: bool) -> bytes:
    with tempfile.TemporaryDirectory(prefix="steer-export-") as folder:
        path = Path(folder) / "vector.gguf"
        try:
            export_gguf(vector, path, hint, drop_layer_zero=drop_layer_zero)
        except ExportError as exc:
            raise ApiError(422, "not_exportable", str(exc)) from None
        return path.read_bytes()


# ------------------------------------------------------------------------------------------- import


@router.post("/import", response_model=TaskInfo, status_code=201, responses={200: {"model": TaskInfo}})
async def import_vector(
    request: Request,
    response: Response,
    format: VectorFormat | None = Query(None, description="gguf or safetensors; guessed from the bytes if unset."),
    name: str | None = Query(None, max_length=200),
    svc: Services = Depends(services),
    who: str | None = Depends(owner),
) -> TaskInfo:
    body = await request.body()
    if not body:
        raise ApiError(422, "invalid_vector", "the request body is empty: send the vector file as the raw body")
    fmt = format or ("gguf" if body[:4] == GGUF_MAGIC else "safetensors")
    if fmt == "gguf":
        vector = _from_gguf(body, svc.lm)
        data = vector.to_bytes()
    else:
        vector, data = _from_safetensors(body, svc.lm), body
    record, created = await _save(svc, vector, data, fmt, name, who)
    if not created:
        response.status_code = 200
    response.headers["Location"] = f"/v1/tasks/{record.id}"
    return task_info(record)


def _from_safetensors(body: bytes, lm: LoadedModel) -> TaskVector:
    try:
        vector = TaskVector.from_bytes(body)
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError, SafetensorError) as exc:
        raise ApiError(422, "invalid_vector", f"the body is not a steering vector in safetensors: {exc}") from None
    if vector.fingerprint != lm.fingerprint:
        raise ApiError(
            409,
            "model_mismatch",
            f"the vector was computed on model {vector.fingerprint}, this server runs {lm.fingerprint}",
        )
    problem = _shape_problem(vector, lm)
    if problem:
        raise ApiError(422, "invalid_vector", problem)
    return vector


def _shape_problem(vector: TaskVector, lm: LoadedModel) -> str | None:
    arch = lm.arch
    if vector.mode == "head_mix_last":
        expected = {
            "head_means": (arch.num_layers, arch.num_heads, arch.head_dim),
            "gate_logits": (arch.num_layers, arch.num_heads),
        }
    else:
        expected = {"residual": (arch.num_layers, arch.hidden_size)}
    for key, shape in expected.items():
        if tuple(vector.tensors[key].shape) != shape:
            return f"tensor {key} has shape {list(vector.tensors[key].shape)}, this model needs {list(shape)}"
    if not all(0 <= layer < arch.num_layers for layer in vector.layers):
        return f"the vector's layers {vector.layers} are not all within 0..{arch.num_layers - 1}"
    return None


def _from_gguf(body: bytes, lm: LoadedModel) -> TaskVector:
    with tempfile.TemporaryDirectory(prefix="steer-import-") as folder:
        path = Path(folder) / "vector.gguf"
        path.write_bytes(body)
        try:
            hint, directions = read_gguf_directions(path)
            _check_gguf_model(hint, directions, lm)
            return import_gguf(path, lm.fingerprint, lm.arch.num_layers, lm.arch.hidden_size)
        except VectorImportError as exc:
            raise ApiError(422, "invalid_vector", str(exc).replace(str(path), "the GGUF file")) from None


def _check_gguf_model(hint: str | None, directions: dict[int, np.ndarray], lm: LoadedModel) -> None:
    """A GGUF has no fingerprint: check what it has (model family, layer count, hidden size) against ours."""
    accepted = {model_hint(lm).lower(), lm.arch.family.lower()}
    if (hint or "").lower() not in accepted:
        raise ApiError(
            409,
            "model_mismatch",
            f"the control vector is for model family {hint!r}; this server runs {model_hint(lm)!r} "
            f"(family {lm.arch.family!r})",
        )
    arch = lm.arch
    for layer, data in sorted(directions.items()):
        if not 0 <= layer < arch.num_layers:
            raise ApiError(
                409, "model_mismatch", f"direction.{layer} is out of range: this model has {arch.num_layers} layers"
            )
        if data.size != arch.hidden_size:
            raise ApiError(
                409,
                "model_mismatch",
                f"direction.{layer} has {data.size} values, this model's hidden size is {arch.hidden_size}",
            )


def import_id(owner_id: str | None, data: bytes) -> str:
    """A content hash of the vector bytes and the owner: importing the same file twice gives the same task."""
    digest = hashlib.sha256()
    digest.update(f"import|{owner_id}|".encode())
    digest.update(data)
    return "task-" + digest.hexdigest()[:24]


async def _save(
    svc: Services, vector: TaskVector, data: bytes, fmt: str, name: str | None, who: str | None
) -> tuple[TaskRecord, bool]:
    task_id = import_id(who, data)
    now = time.time()
    record = TaskRecord(
        id=task_id,
        owner=who,
        name=name,
        method=vector.method,
        status="ready",
        spec={
            "demonstrations": [],
            "template": vector.template.model_dump(),
            "options": vector.options,
            "imported_from": fmt,
        },
        fingerprint=svc.lm.fingerprint,
        created_at=now,
        updated_at=now,
        summary=vector_summary(vector),
    )
    # This replica serves the vector from memory at once; the store gets it right after the record exists.
    svc.tasks.vectors.put(task_id, vector)
    created = await svc.store.create(record)
    await svc.store.put_vector(task_id, data)
    if not created:
        record = await svc.store.get(task_id) or record
    return record, created
