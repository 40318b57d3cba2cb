"""TaskStore in one SQLite file: the embedded default when no Redis is configured.

WAL mode, so readers never wait for a writer. Every sqlite3 call runs on one worker thread
owned by the store (the event loop never touches the disk), which also serialises this
process's calls on its single connection. Several processes may share the file (on a local
disk: WAL does not work over network file systems): put-if-absent is INSERT OR IGNORE,
read-modify-write runs in BEGIN IMMEDIATE transactions, and locks are conditional upserts.
Lock expiry compares wall-clock times (time.time()) of the processes sharing the file. A task's name
is also a column, unique per owner (a partial unique index, `sqlite_names.py`), written in the same
transaction as the record. The tables and the migration of older files are in `sqlite_schema.py`.
Every sqlite3 error (locked past the busy timeout, disk full, I/O error, a corrupt file) comes out
as StoreUnavailable; after one that is not mere locking the connection is reopened on next use.
"""

from __future__ import annotations

import asyncio
import builtins
import errno
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

from .base import UNFINISHED, StoreFull, StoreUnavailable, TaskRecord, apply_update, parse_record
from .sqlite_names import claim_name, name_holder
from .sqlite_schema import create_schema

T = TypeVar("T")

_UPSERT_VECTOR = "INSERT INTO vectors (id, data) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET data = excluded.data"
_UNFINISHED_SQL = ", ".join(f"'{s}'" for s in sorted(UNFINISHED))


def _is_transient(exc: sqlite3.Error) -> bool:
    """True for "database is locked" / "busy": another process holds the lock; the connection itself is fine."""
    return any(word in str(exc).lower() for word in ("locked", "busy"))


def _enable_wal(conn: sqlite3.Connection, timeout_s: float) -> None:
    """Switch the file to WAL, waiting out other processes that are opening it at the same moment.

    The switch needs an exclusive lock, and while another connection holds a pending write SQLite
    answers "database is locked" at once instead of calling the busy handler: several processes
    opening a new file together would fail without this retry loop.
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.005
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if not _is_transient(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


@contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """A write transaction that takes the database's write lock up front (no upgrade deadlocks)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        # SQLite may have rolled back already (a full disk does): the original error is the one to raise.
        if conn.in_transaction:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class SqliteStore:
    """TaskStore in one SQLite file, safe for several processes on one machine."""

    def __init__(self, path: Path, *, busy_timeout_s: float = 2.0) -> None:
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
            _enable_wal(conn, self._busy_timeout_s)
            conn.execute("PRAGMA synchronous=NORMAL")
            with _immediate(conn):
                create_schema(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            self._conn = self._open()
        try:
            return fn(self._conn)
        except sqlite3.Error as exc:
            conn = self._conn
            if not _is_transient(exc):
                self._drop_connection()
            elif conn is not None and conn.in_transaction:  # e.g. a COMMIT that found the file busy
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    self._drop_connection()
            raise

    def _drop_connection(self) -> None:
        """Forget a connection that may be mid-transaction or broken; the next call opens a fresh one."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with suppress(sqlite3.Error):
                conn.close()

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise StoreUnavailable("task store is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._call, fn)
        except (sqlite3.Error, OSError) as exc:  # OperationalError, DatabaseError, ... (not ValueError: bad input)
            if "full" in str(exc) or getattr(exc, "errno", None) == errno.ENOSPC:  # SQLITE_FULL: "... is full"
                raise StoreFull(f"sqlite store {self.path}: {exc}") from exc
            raise StoreUnavailable(f"sqlite store {self.path}: {type(exc).__name__}: {exc}") from exc

    # records
    async def get(self, task_id: str) -> TaskRecord | None:
        def op(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT data FROM tasks WHERE id = ?", (task_id,)).fetchone()
            return None if row is None else row[0]

        raw = await self._run(op)
        return None if raw is None else parse_record(raw, task_id)

    async def create(self, record: TaskRecord, vector: bytes | None = None) -> bool:
        args = (record.id, record.owner, record.created_at, record.to_json(), record.status, record.name)
        blob = None if vector is None else bytes(vector)

        def op(conn: sqlite3.Connection) -> bool:
            with _immediate(conn):
                if conn.execute("SELECT 1 FROM tasks WHERE id = ?", (record.id,)).fetchone() is not None:
                    return False
                claim_name(conn, record.id, record.owner, record.name)
                conn.execute(
                    "INSERT INTO tasks (id, owner, created_at, data, status, name) VALUES (?, ?, ?, ?, ?, ?)", args
                )
                if blob is None:  # a new task has no vector yet: drop any leftover
                    conn.execute("DELETE FROM vectors WHERE id = ?", (record.id,))
                else:
                    conn.execute(_UPSERT_VECTOR, (record.id, blob))
                return True

        return await self._run(op)

    async def update(self, task_id: str, **fields: Any) -> TaskRecord | None:
        return await self._run(lambda conn: self._read_modify_write(conn, task_id, fields, None))

    async def finish(self, task_id: str, vector: bytes, **fields: Any) -> TaskRecord | None:
        blob = bytes(vector)
        return await self._run(lambda conn: self._read_modify_write(conn, task_id, fields, blob))

    @staticmethod
    def _read_modify_write(
        conn: sqlite3.Connection, task_id: str, fields: dict[str, Any], vector: bytes | None
    ) -> TaskRecord | None:
        with _immediate(conn):
            row = conn.execute("SELECT data FROM tasks WHERE id = ?", (task_id,)).fetchone()
            old = None if row is None else parse_record(row[0], task_id)
            if old is None:
                return None
            new = apply_update(old, fields)
            if (new.owner, new.name) != (old.owner, old.name):
                claim_name(conn, task_id, new.owner, new.name)
            conn.execute(
                "UPDATE tasks SET owner = ?, created_at = ?, data = ?, status = ?, name = ? WHERE id = ?",
                (new.owner, new.created_at, new.to_json(), new.status, new.name, task_id),
            )
            if vector is not None:
                conn.execute(_UPSERT_VECTOR, (task_id, vector))
            return new

    async def take_name(self, task_id: str, name: str) -> TaskRecord | None:
        def op(conn: sqlite3.Connection) -> TaskRecord | None:
            with _immediate(conn):
                row = conn.execute("SELECT data FROM tasks WHERE id = ?", (task_id,)).fetchone()
                old = None if row is None else parse_record(row[0], task_id)
                if old is None:
                    return None
                if old.name == name:
                    return old
                holder = name_holder(conn, old.owner, name)
                if holder is not None and holder != task_id:
                    held = conn.execute("SELECT data FROM tasks WHERE id = ?", (holder,)).fetchone()[0]
                    loser = parse_record(held, holder)
                    # An unreadable holder keeps its (unreadable) data; only its name column is freed.
                    data = held if loser is None else apply_update(loser, {"name": None}).to_json()
                    conn.execute("UPDATE tasks SET name = NULL, data = ? WHERE id = ?", (data, holder))
                new = apply_update(old, {"name": name})
                conn.execute("UPDATE tasks SET name = ?, data = ? WHERE id = ?", (name, new.to_json(), task_id))
                return new

        return await self._run(op)

    async def find_name(self, owner: str | None, name: str) -> str | None:
        return await self._run(lambda conn: name_holder(conn, owner, name))

    async def count(self, owner: str | None) -> int:
        def op(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT COUNT(*) FROM tasks WHERE owner IS ?", (owner,)).fetchone()[0])

        return await self._run(op)

    async def list(
        self, owner: str | None = None, all_owners: bool = False, *, offset: int = 0, limit: int | None = None
    ) -> builtins.list[TaskRecord]:
        if offset < 0 or (limit is not None and limit < 0):
            raise ValueError("offset and limit must not be negative")
        page = (-1 if limit is None else limit, offset)

        def op(conn: sqlite3.Connection) -> builtins.list[tuple[str, str]]:
            if all_owners:
                rows = conn.execute(
                    "SELECT id, data FROM tasks ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?", page
                )
            else:
                rows = conn.execute(
                    "SELECT id, data FROM tasks WHERE owner IS ? ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
                    (owner, *page),
                )
            return rows.fetchall()

        records = (parse_record(raw, task_id) for task_id, raw in await self._run(op))
        return [r for r in records if r is not None]

    async def unfinished(self) -> builtins.list[str]:
        def op(conn: sqlite3.Connection) -> builtins.list[str]:
            rows = conn.execute(f"SELECT id FROM tasks WHERE status IN ({_UNFINISHED_SQL}) ORDER BY id")
            return [r[0] for r in rows]

        return await self._run(op)

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
