"""The task store's contract: the record, the protocol, and the one error callers map to 503."""

from __future__ import annotations

import builtins
import logging
import time
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

TaskStatus = Literal["pending", "running", "ready", "failed"]

log = logging.getLogger(__name__)


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
    orphaned: int = 0  # attempts that ended with no outcome (the computing replica died); capped by the worker

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, data: str | bytes) -> TaskRecord:
        return cls.model_validate_json(data)


class StoreUnavailable(Exception):
    """The backend cannot serve the call (down, timed out, full, read-only, locked, I/O error): answer 503."""


class NameTaken(Exception):
    """Another task of the same owner holds the name (nothing was written): names are unique per owner."""

    def __init__(self, name: str, holder: str) -> None:
        super().__init__(f"the name {name!r} belongs to task {holder!r}")
        self.name, self.holder = name, holder


class StoreFull(StoreUnavailable):
    """The backend refuses writes for lack of space (Redis maxmemory with noeviction, a full disk).

    Reads still work, and retrying soon will not help until space is freed; a caller that does not
    tell it apart treats it as any StoreUnavailable.
    """


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


UNFINISHED: frozenset[str] = frozenset({"pending", "running"})


def parse_record(raw: str | bytes, where: str) -> TaskRecord | None:
    """The record in `raw`, or None (with a warning) when it is corrupt: one bad record must not break the rest."""
    try:
        return TaskRecord.from_json(raw)
    except ValueError as exc:  # pydantic's ValidationError (bad JSON or wrong types) is a ValueError
        log.warning("skipping unreadable task record %s: %s", where, str(exc).splitlines()[0])
        return None


@runtime_checkable
class TaskStore(Protocol):
    """Where tasks and their vectors live. Every method is async; every backend fault raises StoreUnavailable."""

    async def get(self, task_id: str) -> TaskRecord | None:
        """The record, or None if it is missing or unreadable (the latter is logged)."""
        ...

    async def create(self, record: TaskRecord, vector: bytes | None = None) -> bool:
        """Atomic put-if-absent of the record, its name and, when given, its vector; False if the id already
        exists. Raises NameTaken (nothing written) when another task of the owner holds the record's name."""
        ...

    async def update(self, task_id: str, **fields: Any) -> TaskRecord | None:
        """Partial update (read-modify-write, atomic), bumps updated_at; None if the task is missing.

        A new `name` is claimed (and the old one freed) in the same step; NameTaken (nothing written) when
        another task of the owner holds it.
        """
        ...

    async def take_name(self, task_id: str, name: str) -> TaskRecord | None:
        """Give the task `name`, taking it from the owner's task that holds it (left unnamed) in the same
        atomic step; None if the task is missing."""
        ...

    async def find_name(self, owner: str | None, name: str) -> str | None:
        """The id of `owner`'s task called `name`, or None."""
        ...

    async def finish(self, task_id: str, vector: bytes, **fields: Any) -> TaskRecord | None:
        """Store the vector and apply `update(**fields)` in one atomic step; None (nothing written) if missing."""
        ...

    async def count(self, owner: str | None) -> int:
        """How many tasks `owner` has (None: the open server's tasks)."""
        ...

    async def list(
        self, owner: str | None = None, all_owners: bool = False, *, offset: int = 0, limit: int | None = None
    ) -> builtins.list[TaskRecord]:
        """Newest first (created_at desc, then id desc); only `owner`'s tasks unless all_owners; one page.

        Unreadable records are skipped (and logged), so a page may be shorter than `limit`.
        """
        ...

    async def unfinished(self) -> builtins.list[str]:
        """Ids of the tasks whose status is pending or running (for reconcilers: cheap, called often)."""
        ...

    async def delete(self, task_id: str) -> bool:
        """Remove record, vector, lock and name; False if there was no record."""
        ...

    async def put_vector(self, task_id: str, data: bytes) -> None:
        """Store the vector bytes; a no-op when the task record does not exist (deleted meanwhile)."""
        ...

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
