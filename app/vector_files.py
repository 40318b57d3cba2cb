"""Vectors that leave and enter the service as files: export a task's vector, import one as a ready task.

- Export answers the stored safetensors bytes as they are (any method), or writes a llama.cpp / repeng
  GGUF control vector (residual additive modes only: 422 otherwise).
- Import creates a ready task from a file. A safetensors vector carries its model fingerprint, which must
  be this server's (409). A GGUF carries none: it gets this server's fingerprint after its layers, hidden
  size and model hint are checked (409 when they are another model's).

Files from users are hostile: they are read by strict readers (`steering.vectors.gguf_reader`,
`steering.vectors.safetensors_reader`) off the event loop, at most `max_concurrent_imports` at once (more answer
429) and within `IMPORT_TIMEOUT_S`. Anything malformed answers 422 `invalid_vector`, and so do metadata past its
bounds (`steering.vectors.task_vector.SteeringMetadata`) and tensors whose norms dwarf the model's own activations
(`steering.vectors.task_vector.check_norms`, against the scale `Bounds` measured at start-up).
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal

from fastapi import Request

from app.error_codes import ApiErrors
from app.errors import quoted
from app.import_slots import ImportSlots, import_slots
from app.services import Services, services
from app.store import TaskRecord
from app.worker import vector_summary
from steering.model.loading import LoadedModel
from steering.vectors.export import (
    ExportError,
    ModelMismatch,
    VectorImportError,
    directions_to_vector,
    export_gguf,
    read_gguf_directions,
)
from steering.vectors.task_vector import ActivationScale, TaskVector, check_for_model

VectorFormat = Literal["safetensors", "gguf"]
GGUF_MAGIC = b"GGUF"
# A backstop: the readers are linear in the file size, so only an overloaded machine gets near it.
IMPORT_TIMEOUT_S = 30.0


class VectorFiles:
    """Export and import of task vectors for one server's model, store and quotas."""

    def __init__(self, svc: Services, slots: ImportSlots) -> None:
        self.svc, self.slots = svc, slots

    async def export(
        self, task_id: str, format: VectorFormat, drop_layer_zero: bool, owner: str | None
    ) -> tuple[bytes, str]:
        """The file's bytes and its name."""
        record = await self.svc.tasks.get(task_id, owner)
        task_id = record.id  # the path may have given the task's name
        if record.status != "ready":
            raise ApiErrors.TASK_NOT_READY(task_id=record.id, status=record.status)
        data = await self.svc.store.get_vector(task_id)
        if data is None:
            raise ApiErrors.NO_VECTOR_STORED(task_id=task_id)
        if format == "gguf":
            data = await asyncio.to_thread(_stored_to_gguf, data, model_hint(self.svc.lm), drop_layer_zero)
        return data, f"{task_id}.{format}"

    async def import_(
        self, body: Callable[[], Awaitable[bytes]], format: VectorFormat | None, name: str | None, owner: str | None
    ) -> tuple[TaskRecord, bool]:
        """The ready task of an imported file and whether it is new. `body` is read only once a slot is
        held: the slots bound the memory of uploads too."""
        self.slots.acquire()
        handed_over = False
        try:
            data = await body()
            if not data:
                raise ApiErrors.EMPTY_VECTOR_BODY()
            fmt = format or ("gguf" if data[:4] == GGUF_MAGIC else "safetensors")
            handed_over = True
            lm, scale = self.svc.lm, self.svc.bounds.scale
            vector, stored = await self.slots.run(lambda: read_vector(data, fmt, lm, scale), IMPORT_TIMEOUT_S)
        finally:
            if not handed_over:
                self.slots.release()
        self.svc.bounds.strength(vector.default_strength, "default_strength")
        return await self._save(vector, stored, fmt, name, owner)

    async def _save(
        self, vector: TaskVector, data: bytes, fmt: str, name: str | None, who: str | None
    ) -> tuple[TaskRecord, bool]:
        svc = self.svc
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
        created = await svc.tasks.create(record, vector=data)  # record, name and vector in one atomic write
        if not created:  # imported before: a new name renames it, as posting a task again does
            record = await svc.tasks.name_again(await svc.store.get(task_id) or record, name, take_name=False)
        svc.tasks.vectors.put(record, vector)
        return record, created


def vector_files(request: Request) -> VectorFiles:
    """The service for this request; its slots live on the app, the rest is this lifespan's `Services`."""
    svc = services(request)
    return VectorFiles(svc, import_slots(request.app, svc.settings.max_concurrent_imports))


# ------------------------------------------------------------------------------------------- export


def model_hint(lm: LoadedModel) -> str:
    """What a GGUF control vector names as its model: the config's model type, as repeng writes it."""
    return str(getattr(lm.model.config, "model_type", None) or lm.arch.family)


def _stored_to_gguf(data: bytes, hint: str, drop_layer_zero: bool) -> bytes:
    try:
        vector = TaskVector.from_bytes(data)
    except VectorImportError as exc:
        raise ApiErrors.STORED_VECTOR_UNREADABLE(reason=exc) from None
    return _to_gguf(vector, hint, drop_layer_zero)


def _to_gguf(vector: TaskVector, hint: str, drop_layer_zero: bool) -> bytes:
    with tempfile.TemporaryDirectory(prefix="steer-export-") as folder:
        path = Path(folder) / "vector.gguf"
        try:
            export_gguf(vector, path, hint, drop_layer_zero=drop_layer_zero)
        except ExportError as exc:
            raise ApiErrors.NOT_EXPORTABLE(reason=exc) from None
        return path.read_bytes()


# ------------------------------------------------------------------------------------------- import


def read_vector(body: bytes, fmt: str, lm: LoadedModel, scale: ActivationScale) -> tuple[TaskVector, bytes]:
    """The vector of an import body, checked against this server's model (shapes, layers, and norms against
    the model's own activations, `scale`), and the bytes to store."""
    if fmt == "gguf":
        vector = _from_gguf(body, lm, scale)
        return vector, vector.to_bytes()
    return _from_safetensors(body, lm, scale), body


def _from_safetensors(body: bytes, lm: LoadedModel, scale: ActivationScale) -> TaskVector:
    try:
        vector = TaskVector.from_bytes(body)
    except VectorImportError as exc:
        raise ApiErrors.NOT_A_SAFETENSORS_VECTOR(reason=exc) from None
    if vector.fingerprint != lm.fingerprint:
        raise ApiErrors.VECTOR_MODEL_MISMATCH(vector_model=vector.fingerprint, served=lm.fingerprint)
    try:
        check_for_model(vector, lm.arch, scale)
    except VectorImportError as exc:
        # Same fingerprint, shapes of another model (the file contradicts itself), or norms that dwarf the model's.
        raise ApiErrors.INVALID_VECTOR(reason=exc) from None
    return vector


def _from_gguf(body: bytes, lm: LoadedModel, scale: ActivationScale) -> TaskVector:
    try:
        hint, directions = read_gguf_directions(body)
    except VectorImportError as exc:
        raise ApiErrors.INVALID_VECTOR(reason=exc) from None
    accepted = {model_hint(lm).lower(), lm.arch.family.lower()}
    if (hint or "").lower() not in accepted:
        raise ApiErrors.CONTROL_VECTOR_FAMILY_MISMATCH(
            family=quoted(hint) if hint is not None else None, model=model_hint(lm), served_family=lm.arch.family
        )
    try:
        # A GGUF has no fingerprint: its layers and row sizes are the only sign of the model it was made for.
        vector = directions_to_vector(hint, directions, lm.fingerprint, lm.arch.num_layers, lm.arch.hidden_size)
        check_for_model(vector, lm.arch, scale)
    except ModelMismatch as exc:
        raise ApiErrors.MODEL_MISMATCH(reason=exc) from None
    except VectorImportError as exc:
        raise ApiErrors.INVALID_VECTOR(reason=exc) from None
    return vector


def import_id(owner_id: str | None, data: bytes) -> str:
    """A content hash of the vector bytes and the owner: importing the same file twice gives the same task."""
    digest = hashlib.sha256()
    digest.update(f"import|{owner_id}|".encode())
    digest.update(data)
    return "task-" + digest.hexdigest()[:24]
