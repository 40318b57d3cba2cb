"""The tables and indexes of SqliteStore's file, and the migration of files written before some existed."""

from __future__ import annotations

import logging
import sqlite3

from .base import parse_record
from .sqlite_names import name_holder

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    owner TEXT,
    created_at REAL NOT NULL,
    data TEXT NOT NULL,
    status TEXT,
    name TEXT
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
# Created after the migration below has added the columns to files written before they existed.
_STATUS_INDEX = "CREATE INDEX IF NOT EXISTS tasks_status ON tasks (status)"
# NULL owners (the open server) must collide too, and NULLs never do in a unique index: hence ifnull.
_NAME_INDEX = (
    "CREATE UNIQUE INDEX IF NOT EXISTS tasks_owner_name ON tasks (ifnull(owner, ''), name) WHERE name IS NOT NULL"
)
_NAMES_INDEXED = 1  # PRAGMA user_version once the names of the records are in the name column


def create_schema(conn: sqlite3.Connection) -> None:
    """Inside the opening transaction: the tables and indexes, the migration of older files."""
    for stmt in _SCHEMA.split(";"):
        if stmt.strip():
            conn.execute(stmt)
    migrate(conn)


def migrate(conn: sqlite3.Connection) -> None:
    """Files written before the status or the name column: add them and fill them from the records."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(tasks)")}
    if "status" not in columns:
        conn.execute("ALTER TABLE tasks ADD COLUMN status TEXT")
    if "name" not in columns:
        conn.execute("ALTER TABLE tasks ADD COLUMN name TEXT")
    rows = conn.execute("SELECT id, data FROM tasks WHERE status IS NULL").fetchall()
    for task_id, data in rows:
        rec = parse_record(data, task_id)
        conn.execute("UPDATE tasks SET status = ? WHERE id = ?", (rec.status if rec else "unreadable", task_id))
    conn.execute(_STATUS_INDEX)
    if conn.execute("PRAGMA user_version").fetchone()[0] < _NAMES_INDEXED:
        _index_names(conn)
        conn.execute(f"PRAGMA user_version = {_NAMES_INDEXED}")
    conn.execute(_NAME_INDEX)


def _index_names(conn: sqlite3.Connection) -> None:
    """Records written before names were unique per owner: the oldest task keeps a shared name, the others
    lose it (logged), so that every name in a record is the one the index finds."""
    rows = conn.execute("SELECT id, data FROM tasks ORDER BY created_at, id").fetchall()
    for task_id, data in rows:
        rec = parse_record(data, task_id)
        if rec is None or rec.name is None:
            continue
        holder = name_holder(conn, rec.owner, rec.name)
        if holder is None:
            conn.execute("UPDATE tasks SET name = ? WHERE id = ?", (rec.name, task_id))
        elif holder != task_id:
            log.warning("task %s loses the name %r, which the older task %s keeps", task_id, rec.name, holder)
            unnamed = rec.model_copy(update={"name": None})
            conn.execute("UPDATE tasks SET data = ? WHERE id = ?", (unnamed.to_json(), task_id))
