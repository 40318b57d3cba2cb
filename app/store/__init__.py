"""The task store: registered tasks (definition, status) and their computed vectors.

`open_store` picks Redis when a URL is given (replicas share it), else one SQLite file under
`data_dir` (the embedded default, which survives restarts).
"""

from __future__ import annotations

from pathlib import Path

from .base import NameTaken, StoreFull, StoreUnavailable, TaskRecord, TaskStatus, TaskStore
from .redis_store import RedisStore
from .sqlite_store import SqliteStore

SQLITE_FILENAME = "tasks.sqlite3"


def open_store(redis_url: str | None, data_dir: Path, *, prefix: str = "steer:") -> TaskStore:
    """Return a RedisStore for `redis_url`, else a SqliteStore at `data_dir/tasks.sqlite3`.

    Does no I/O: connections open on first use, so a store that is down shows up as
    StoreUnavailable (or ping() False), not as an error here.
    """
    if redis_url:
        return RedisStore(redis_url, prefix=prefix)
    return SqliteStore(Path(data_dir) / SQLITE_FILENAME)


__all__ = [
    "SQLITE_FILENAME",
    "NameTaken",
    "RedisStore",
    "SqliteStore",
    "StoreFull",
    "StoreUnavailable",
    "TaskRecord",
    "TaskStatus",
    "TaskStore",
    "open_store",
]
