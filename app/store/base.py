"""The task store's contract: the record, the protocol, and the one error callers map to 503."""

from __future__ import annotations

import builtins
import time
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

TaskStatus = Literal["pending", "running", "ready", "failed"]


class TaskRecord(BaseModel):
    """One registered task. Stored as JSON (never pickle) in every backend."""

    # Unknown keys written by a newer replica are ignored on read rather than failing.
    model_config = ConfigDict(extra="ignore")

    id: str  # content hash, computed by the caller
    owner: str | None = None  # API key id that registered it (None = open server)
    name: str | None = None
    method: str
    status: TaskStatus = "pending"
    spec: dict[str, Any]  # the posted definition: demonstrations, template, options
    fingerprint: str  # model fingerprint
    created_at: float
    updated_at: float
    error: str | None = None
    progress: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None  # layers, default_strength, metrics once ready
    attempts: int = 0

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, data: str | bytes) -> TaskRecord:
        return cls.model_validate_json(data)


class StoreUnavailable(Exception):
    """The backend cannot be reached (Redis down, SQLite file locked or unreadable): answer 503."""


def apply_update(record: TaskRecord, fields: dict[str, Any]) -> TaskRecord:
    """Return `record` with `fields` replaced and `updated_at` bumped, validated as a whole.

    Raises ValueError for an unknown field or an attempt to change `id`. An explicit
    `updated_at` in `fields` wins over the current time.
    """
    unknown = set(fields) - set(TaskRecord.model_fields)
    if unknown:
        raise ValueError(f"unknown TaskRecord field(s): {sorted(unknown)}")
    if "id" in fields and fields["id"] != record.id:
        raise ValueError("a task's id cannot change")
    data = record.model_dump()
    data.update(fields)
    if "updated_at" not in fields:
        data["updated_at"] = max(time.time(), record.updated_at)
    return TaskRecord.model_validate(data)


@runtime_checkable
class TaskStore(Protocol):
    """Where tasks and their vectors live. Every method is async; backend outages raise StoreUnavailable."""

    async def get(self, task_id: str) -> TaskRecord | None: ...

    async def create(self, record: TaskRecord) -> bool:
        """Atomic put-if-absent across processes; False if the id already exists."""
        ...

    async def update(self, task_id: str, **fields: Any) -> TaskRecord | None:
        """Partial update (read-modify-write, atomic), bumps updated_at; None if the task is missing."""
        ...

    async def list(self, owner: str | None = None, all_owners: bool = False) -> builtins.list[TaskRecord]:
        """Newest first (created_at desc, then id desc); only `owner`'s tasks unless all_owners."""
        ...

    async def delete(self, task_id: str) -> bool:
        """Remove record, vector and lock; False if there was no record."""
        ...

    async def put_vector(self, task_id: str, data: bytes) -> None: ...

    async def get_vector(self, task_id: str) -> bytes | None: ...

    async def acquire_lock(self, task_id: str, holder: str, ttl_s: float) -> bool:
        """Exclusive lock that expires after ttl_s unless refreshed."""
        ...

    async def refresh_lock(self, task_id: str, holder: str, ttl_s: float) -> bool:
        """Extend the lock to ttl_s from now, only if `holder` still holds it."""
        ...

    async def release_lock(self, task_id: str, holder: str) -> None:
        """Free the lock, only if `holder` holds it."""
        ...

    async def ping(self) -> bool:
        """True if the backend answers; False (never raises) when it is unreachable."""
        ...

    async def close(self) -> None: ...
