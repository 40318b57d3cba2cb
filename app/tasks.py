"""Registering, reading and deleting tasks, and turning steering entries into vectors to inject."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence

from pydantic import ValidationError

from app.errors import ApiError, not_found
from app.jobs import VectorWorker
from app.metrics import Metrics
from app.settings import Settings
from app.store import TaskRecord, TaskStore
from app.vector_cache import VectorCache
from steering.inject import SteeringTerm
from steering.methods import options_model
from steering.model import LoadedModel
from steering.protocol import SteeringEntry, TaskCreate, TaskInfo
from steering.templates import DEFAULT_TEMPLATE
from steering.vectors import TaskVector


def task_id_for(owner: str | None, fingerprint: str, body: TaskCreate, options: dict) -> str:
    """A content hash: the same task posted again (by the same owner, on the same model) has the same id."""
    payload = {
        "owner": owner,
        "fingerprint": fingerprint,
        "method": body.method,
        "options": options,
        "template": (body.template or DEFAULT_TEMPLATE).model_dump(),
        "demonstrations": [d.model_dump() for d in body.demonstrations],
    }
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    return "task-" + digest[:24]


def task_info(record: TaskRecord) -> TaskInfo:
    summary = record.summary or {}
    return TaskInfo(
        id=record.id,
        status=record.status,
        method=summary.get("method", record.method),
        name=record.name,
        num_demonstrations=len(record.spec.get("demonstrations", [])) or summary.get("num_demonstrations", 0),
        demonstrations=record.spec.get("demonstrations"),
        layers=summary.get("layers"),
        default_strength=summary.get("default_strength"),
        template=record.spec.get("template"),
        options=record.spec.get("options", {}),
        metrics=summary.get("metrics"),
        progress=record.progress,
        error=record.error,
        created_at=record.created_at,
        updated_at=record.updated_at,
    )


class TaskService:
    def __init__(
        self,
        lm: LoadedModel,
        store: TaskStore,
        worker: VectorWorker,
        vectors: VectorCache,
        settings: Settings,
        metrics: Metrics,
    ) -> None:
        self.lm, self.store, self.worker, self.vectors = lm, store, worker, vectors
        self.settings, self.metrics = settings, metrics

    def _check_limits(self, body: TaskCreate) -> dict:
        limit = self.settings.max_demonstrations
        if len(body.demonstrations) > limit:
            raise ApiError(422, "too_many_demonstrations", f"at most {limit} demonstrations per task")
        longest = max(max(len(d.input), len(d.output)) for d in body.demonstrations)
        if longest > self.settings.max_demonstration_chars:
            raise ApiError(
                422,
                "demonstration_too_long",
                f"a demonstration's input or output has {longest} characters; the limit is "
                f"{self.settings.max_demonstration_chars}",
            )
        try:
            model = options_model(body.method)
        except (ImportError, ValueError):
            raise ApiError(422, "unknown_method", f"method {body.method!r} is not available on this server") from None
        try:
            options = model(**body.options).model_dump()
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ApiError(422, "invalid_options", f"options.{where}: {first['msg']}") from None
        self._check_option_layers(options)
        return options

    def _check_option_layers(self, options: dict) -> None:
        """A layer the model does not have would only fail later, in the computation: refuse it now."""
        num_layers = self.lm.arch.num_layers
        for key in ("layer", "layers"):
            value = options.get(key)
            layers = value if isinstance(value, list) else [value]
            bad = [la for la in layers if isinstance(la, int) and not 0 <= la < num_layers]
            if bad:
                raise ApiError(
                    422, "invalid_options", f"options.{key}: layer {bad[0]} is out of range 0..{num_layers - 1}"
                )

    async def register(self, body: TaskCreate, owner: str | None) -> tuple[TaskRecord, bool]:
        """Create the task (or find it) and make sure its vectors are being computed. Returns (record, created)."""
        options = self._check_limits(body)
        task_id = task_id_for(owner, self.lm.fingerprint, body, options)
        now = time.time()
        record = TaskRecord(
            id=task_id,
            owner=owner,
            name=body.name,
            method=body.method,
            spec={
                "demonstrations": [d.model_dump() for d in body.demonstrations],
                "template": (body.template or DEFAULT_TEMPLATE).model_dump(),
                "options": options,
            },
            fingerprint=self.lm.fingerprint,
            created_at=now,
            updated_at=now,
        )
        created = await self.store.create(record)
        if not created:
            existing = await self.store.get(task_id)
            if existing is None:  # deleted in between: register afresh
                return await self.register(body, owner)
            if existing.status == "failed":  # posting a failed task again retries it
                existing = await self.store.update(task_id, status="pending", error=None, progress=None) or existing
            record = existing
        if record.status != "ready":
            self.worker.submit(task_id)
        return record, created

    async def get(self, task_id: str, owner: str | None) -> TaskRecord:
        record = await self.store.get(task_id)
        if record is None or record.owner != owner:
            raise not_found(f"task {task_id!r}")
        return record

    async def list(self, owner: str | None) -> list[TaskRecord]:
        return await self.store.list(owner=owner)

    async def delete(self, task_id: str, owner: str | None) -> None:
        await self.get(task_id, owner)
        self.worker.cancel(task_id)
        self.vectors.drop(task_id)
        await self.store.delete(task_id)

    async def vector(self, record: TaskRecord) -> TaskVector:
        vector = self.vectors.get(record.id)
        self.metrics.vector_cache.labels("hit" if vector is not None else "miss").inc()
        if vector is None:
            data = await self.store.get_vector(record.id)
            if data is None:
                raise ApiError(409, "task_not_ready", f"task {record.id!r} has no vector stored yet")
            vector = TaskVector.from_bytes(data)
            self.vectors.put(record.id, vector)
        return vector

    async def steering_terms(self, entries: Sequence[SteeringEntry], owner: str | None) -> list[SteeringTerm]:
        if len(entries) > self.settings.max_steering_entries:
            raise ApiError(
                422,
                "too_many_steering_entries",
                f"at most {self.settings.max_steering_entries} steering entries per request",
            )
        terms = []
        for entry in entries:
            if entry.strength is not None and not abs(entry.strength) <= self.settings.max_strength:  # NaN too
                raise ApiError(422, "strength_out_of_range", f"strength must be within ±{self.settings.max_strength}")
            layers = self.lm.arch.num_layers
            if entry.layers is not None and not all(0 <= la < layers for la in entry.layers):
                raise ApiError(422, "invalid_layers", f"layers must be within 0..{layers - 1}")
            if entry.layers is not None and not entry.layers:
                raise ApiError(422, "invalid_layers", "layers, when given, must name at least one layer")
        for entry in entries:
            record = await self.get(entry.task, owner)
            if record.fingerprint != self.lm.fingerprint:
                raise ApiError(
                    409,
                    "model_mismatch",
                    f"task {record.id!r} was computed on model {record.fingerprint}, "
                    f"this server runs {self.lm.fingerprint}",
                )
            if record.status != "ready":
                raise ApiError(409, "task_not_ready", f"task {record.id!r} is {record.status}", status=record.status)
            vector = await self.vector(record)
            vector.check_fingerprint(self.lm.fingerprint)
            strength = entry.strength if entry.strength is not None else vector.default_strength
            layers_override = tuple(entry.layers) if entry.layers is not None else None
            terms.append(SteeringTerm(vector, strength, layers_override))
        return terms
