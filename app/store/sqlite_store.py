"""TaskStore in one SQLite file: the embedded default when no Redis is configured.

WAL mode, so readers never wait for a writer. Every sqlite3 call runs on one worker thread
owned by the store (the event loop never touches the disk), which also serialises this
process's calls on its single connection. Several processes may share the file (on a local
disk: WAL does not work over network file systems): put-if-absent is INSERT OR IGNORE,
read-modify-write runs in BEGIN IMMEDIATE transactions, and locks are conditional upserts.
Lock expiry compares wall-clock times (time.time()) of the processes sharing the file.
"""

from __future__ import annotations

import asyncio
import builtins
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from .base import StoreUnavailable, TaskRecord, apply_update

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    owner TEXT,
    created_at REAL NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_created ON tasks (created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS tasks_owner_created ON tasks (owner, created_at DESC, id DESC);
CREATE TABLE IF NOT EXISTS vectors (
    id TEXT PRIMARY KEY,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS locks (
    id TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at REAL NOT NULL
);
"""


@contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """A write transaction that takes the database's write lock up front (no upgrade deadlocks)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class SqliteStore:
    """TaskStore in one SQLite file, safe for several processes on one machine."""

    def __init__(self, path: Path, *, busy_timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        self._busy_timeout_s = busy_timeout_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    # plumbing
    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            with _immediate(conn):
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        conn.execute(stmt)
        except BaseException:
            conn.close()
            raise
        return conn

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            self._conn = self._open()
        return fn(self._conn)

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise StoreUnavailable("task store is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._call, fn)
        except (sqlite3.OperationalError, OSError) as exc:
            raise StoreUnavailable(f"sqlite store {self.path}: {exc}") from exc

    # records
    async def get(self, task_id: str) -> TaskRecord | None:
        def op(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT data FROM tasks WHERE id = ?", (task_id,)).fetchone()
            return None if row is None else row[0]

        raw = await self._run(op)
        return None if raw is None else TaskRecord.from_json(raw)

    async def create(self, record: TaskRecord) -> bool:
        args = (record.id, record.owner, record.created_at, record.to_json())

        def op(conn: sqlite3.Connection) -> bool:
            cur = conn.execute("INSERT OR IGNORE INTO tasks (id, owner, created_at, data) VALUES (?, ?, ?, ?)", args)
            return cur.rowcount == 1

        return await self._run(op)

    async def update(self, task_id: str, **fields: Any) -> TaskRecord | None:
        def op(conn: sqlite3.Connection) -> TaskRecord | None:
            with _immediate(conn):
                row = conn.execute("SELECT data FROM tasks WHERE id = ?", (task_id,)).fetchone()
                if row is None:
                    return None
                new = apply_update(TaskRecord.from_json(row[0]), fields)
                conn.execute(
                    "UPDATE tasks SET owner = ?, created_at = ?, data = ? WHERE id = ?",
                    (new.owner, new.created_at, new.to_json(), task_id),
                )
                return new

        return await self._run(op)

    async def list(self, owner: str | None = None, all_owners: bool = False) -> builtins.list[TaskRecord]:
        def op(conn: sqlite3.Connection) -> builtins.list[str]:
            if all_owners:
                rows = conn.execute("SELECT data FROM tasks ORDER BY created_at DESC, id DESC")
            else:
                rows = conn.execute(
                    "SELECT data FROM tasks WHERE owner IS ? ORDER BY created_at DESC, id DESC", (owner,)
                )
            return [r[0] for r in rows]

        return [TaskRecord.from_json(raw) for raw in await self._run(op)]

    async def delete(self, task_id: str) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            with _immediate(conn):
                n = conn.execute("DELETE FROM tasks WHERE id = ?", (task_id,)).rowcount
                conn.execute("DELETE FROM vectors WHERE id = ?", (task_id,))
                conn.execute("DELETE FROM locks WHERE id = ?", (task_id,))
            return n == 1

        return await self._run(op)

    # vectors
    async def put_vector(self, task_id: str, data: bytes) -> None:
        """Store the vector bytes; a no-op when the task record does not exist (deleted meanwhile)."""
        blob = bytes(data)

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO vectors (id, data) SELECT ?, ? WHERE EXISTS (SELECT 1 FROM tasks WHERE id = ?) "
                "ON CONFLICT (id) DO UPDATE SET data = excluded.data",
                (task_id, blob, task_id),
            )

        await self._run(op)

    async def get_vector(self, task_id: str) -> bytes | None:
        def op(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute("SELECT data FROM vectors WHERE id = ?", (task_id,)).fetchone()
            return None if row is None else bytes(row[0])

        return await self._run(op)

    # locks
    async def acquire_lock(self, task_id: str, holder: str, ttl_s: float) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            now = time.time()
            cur = conn.execute(
                "INSERT INTO locks (id, holder, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at "
                "WHERE locks.expires_at <= ?",
                (task_id, holder, now + ttl_s, now),
            )
            return cur.rowcount == 1

        return await self._run(op)

    async def refresh_lock(self, task_id: str, holder: str, ttl_s: float) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            now = time.time()
            cur = conn.execute(
                "UPDATE locks SET expires_at = ? WHERE id = ? AND holder = ? AND expires_at > ?",
                (now + ttl_s, task_id, holder, now),
            )
            return cur.rowcount == 1

        return await self._run(op)

    async def release_lock(self, task_id: str, holder: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM locks WHERE id = ? AND holder = ?", (task_id, holder))

        await self._run(op)

    # lifecycle
    async def ping(self) -> bool:
        """True if the file can be opened and queried; False otherwise (never raises for that)."""
        try:
            return await self._run(lambda conn: conn.execute("SELECT 1").fetchone() == (1,))
        except StoreUnavailable:
            return False

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True

        def op() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._executor, op)
        self._executor.shutdown(wait=False)
