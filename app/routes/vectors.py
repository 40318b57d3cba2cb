"""Vectors that leave and enter the service: export a task's vector, import one as a ready task.

- `GET /v1/tasks/{id}/vector?format=safetensors` answers the stored bytes as they are (any method);
  `format=gguf` writes a llama.cpp / repeng control vector (residual additive modes only: 422 otherwise).
- `POST /v1/tasks/import?format=gguf|safetensors&name=...` takes the file as the raw body and creates a
  ready task. A safetensors vector carries its model fingerprint, which must be this server's (409). A GGUF
  carries none: it gets this server's fingerprint after its layers, hidden size and model hint are checked
  (409 when they are another model's).

Files from users are hostile: they are read by strict readers (`steering.gguf_reader`,
`steering.safetensors_reader`) off the event loop, at most `max_concurrent_imports` at once (more answer
429) and within `IMPORT_TIMEOUT_S`. Anything malformed answers 422 `invalid_vector`.
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response

from app.errors import ApiError
from app.jobs import vector_summary
from app.services import Services, owner, services
from app.store import TaskRecord
from app.tasks import task_info
from steering.export import (
    ExportError,
    ModelMismatch,
    VectorImportError,
    directions_to_vector,
    export_gguf,
    read_gguf_directions,
)
from steering.model import LoadedModel
from steering.protocol import TaskInfo
from steering.vectors import TaskVector, check_for_model

router = APIRouter(prefix="/v1/tasks", tags=["vectors"])

VectorFormat = Literal["safetensors", "gguf"]
GGUF_MAGIC = b"GGUF"
MEDIA_TYPES = {"safetensors": "application/octet-stream", "gguf": "application/octet-stream"}
# A backstop: the readers are linear in the file size, so only an overloaded machine gets near it.
IMPORT_TIMEOUT_S = 30.0
IMPORT_BODY = {
    "requestBody": {
        "required": True,
        "description": "The vector file as the raw body: a GGUF control vector or a safetensors steering vector.",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}

T = TypeVar("T")


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
        data = await asyncio.to_thread(_stored_to_gguf, data, model_hint(svc.lm), drop_layer_zero)
    filename = f"{task_id}.{format}"
    return Response(
        content=data,
        media_type=MEDIA_TYPES[format],
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def model_hint(lm: LoadedModel) -> str:
    """What a GGUF control vector names as its model: the config's model type, as repeng writes it."""
    return str(getattr(lm.model.config, "model_type", None) or lm.arch.family)


def _stored_to_gguf(data: bytes, hint: str, drop_layer_zero: bool) -> bytes:
    try:
        vector = TaskVector.from_bytes(data)
    except VectorImportError as exc:
        raise ApiError(409, "task_not_ready", f"the stored vector is unreadable ({exc}); import it again") from None
    return _to_gguf(vector, hint, drop_layer_zero)


def _to_gguf(vector: TaskVector, hint: str, drop_layer_zero: bool) -> bytes:
    with tempfile.TemporaryDirectory(prefix="steer-export-") as folder:
        path = Path(folder) / "vector.gguf"
        try:
            export_gguf(vector, path, hint, drop_layer_zero=drop_layer_zero)
        except ExportError as exc:
            raise ApiError(422, "not_exportable", str(exc)) from None
        return path.read_bytes()


# ------------------------------------------------------------------------------------------- import


class ImportSlots:
    """At most `limit` imports read at once. A slot is held until its reading thread ends, even when the
    request has already answered (timeout, disconnect), so slow files cannot pile up threads."""

    def __init__(self, limit: int) -> None:
        self.limit, self.busy = limit, 0

    def acquire(self) -> None:
        if self.busy >= self.limit:
            raise ApiError(
                429,
                "too_many_imports",
                f"{self.limit} vector imports are being read already; retry shortly",
                headers={"Retry-After": "1"},
            )
        self.busy += 1

    def release(self) -> None:
        self.busy -= 1

    async def run(self, fn: Callable[[], T], timeout_s: float) -> T:
        """`fn()` in a worker thread, in the slot this caller acquired (released when the thread ends)."""
        future = asyncio.get_running_loop().run_in_executor(None, fn)
        future.add_done_callback(self._finished)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            raise ApiError(
                503,
                "import_timeout",
                f"reading the vector took over {timeout_s:.0f} s; retry when the server is less busy",
                headers={"Retry-After": "5"},
            ) from None

    def _finished(self, future: asyncio.Future) -> None:
        self.release()
        if not future.cancelled():
            future.exception()  # retrieved, so an abandoned failure is not logged as never retrieved


def import_slots(app: FastAPI, limit: int) -> ImportSlots:
    slots = getattr(app.state, "import_slots", None)
    if slots is None:
        slots = app.state.import_slots = ImportSlots(limit)
    return slots


@router.post(
    "/import",
    response_model=TaskInfo,
    status_code=201,
    responses={200: {"model": TaskInfo}},
    openapi_extra=IMPORT_BODY,
)
async def import_vector(
    request: Request,
    response: Response,
    format: VectorFormat | None = Query(None, description="gguf or safetensors; guessed from the bytes if unset."),
    name: str | None = Query(None, max_length=200),
    svc: Services = Depends(services),
    who: str | None = Depends(owner),
) -> TaskInfo:
    slots = import_slots(request.app, svc.settings.max_concurrent_imports)
    slots.acquire()  # before the body is read: the slots bound the memory of uploads too
    handed_over = False
    try:
        body = await request.body()
        if not body:
            raise ApiError(422, "invalid_vector", "the request body is empty: send the vector file as the raw body")
        fmt = format or ("gguf" if body[:4] == GGUF_MAGIC else "safetensors")
        handed_over = True
        vector, data = await slots.run(lambda: read_vector(body, fmt, svc.lm), IMPORT_TIMEOUT_S)
    finally:
        if not handed_over:
            slots.release()
    svc.bounds.strength(vector.default_strength, "default_strength")
    record, created = await _save(svc, vector, data, fmt, name, who)
    if not created:
        response.status_code = 200
    response.headers["Location"] = f"/v1/tasks/{record.id}"
    return task_info(record)


def read_vector(body: bytes, fmt: str, lm: LoadedModel) -> tuple[TaskVector, bytes]:
    """The vector of an import body, checked against this server's model, and the bytes to store."""
    if fmt == "gguf":
        vector = _from_gguf(body, lm)
        return vector, vector.to_bytes()
    return _from_safetensors(body, lm), body


def _from_safetensors(body: bytes, lm: LoadedModel) -> TaskVector:
    try:
        vector = TaskVector.from_bytes(body)
    except VectorImportError as exc:
        raise ApiError(422, "invalid_vector", f"the body is not a steering vector in safetensors: {exc}") from None
    if vector.fingerprint != lm.fingerprint:
        raise ApiError(
            409,
            "model_mismatch",
            f"the vector was computed on model {vector.fingerprint}, this server runs {lm.fingerprint}",
        )
    try:
        check_for_model(vector, lm.arch)
    except VectorImportError as exc:
        # Same fingerprint, shapes of another model: the file contradicts itself.
        raise ApiError(422, "invalid_vector", str(exc)) from None
    return vector


def _from_gguf(body: bytes, lm: LoadedModel) -> TaskVector:
    try:
        hint, directions = read_gguf_directions(body)
    except VectorImportError as exc:
        raise ApiError(422, "invalid_vector", str(exc)) from None
    accepted = {model_hint(lm).lower(), lm.arch.family.lower()}
    if (hint or "").lower() not in accepted:
        raise ApiError(
            409,
            "model_mismatch",
            f"the control vector is for model family {hint!r}; this server runs {model_hint(lm)!r} "
            f"(family {lm.arch.family!r})",
        )
    try:
        # A GGUF has no fingerprint: its layers and row sizes are the only sign of the model it was made for.
        vector = directions_to_vector(hint, directions, lm.fingerprint, lm.arch.num_layers, lm.arch.hidden_size)
        check_for_model(vector, lm.arch)
    except ModelMismatch as exc:
        raise ApiError(409, "model_mismatch", str(exc)) from None
    except VectorImportError as exc:
        raise ApiError(422, "invalid_vector", str(exc)) from None
    return vector


def import_id(owner_id: str | None, data: bytes) -> str:
    """A content hash of the vector bytes and the owner: importing the same file twice gives the same task."""
    digest = hashlib.sha256()
    digest.update(f"import|{owner_id}|".encode())
    digest.update(data)
    return "task-" + digest.hexdigest()[:24]


async def _save(
    svc: Services, vector: TaskVector, data: bytes, fmt: str, name: str | None, who: str | None
) -> tuple[TaskRecord, bool]:
    task_id = await asyncio.to_thread(import_id, who, data)  # hashing up to max_vector_bytes: off the event loop
    if await svc.store.get(task_id) is None:
        await svc.tasks.check_task_quota(who)
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
    created = await svc.store.create(record, vector=data)  # record and vector in one atomic write
    if not created:
        record = await svc.store.get(task_id) or record
    svc.tasks.vectors.put(record, vector)
    return record, created
