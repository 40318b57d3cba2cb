"""Task names, unique per owner: a column of the tasks table with a partial unique index."""

from __future__ import annotations

import sqlite3

from .base import NameTaken


def name_holder(conn: sqlite3.Connection, owner: str | None, name: str) -> str | None:
    row = conn.execute(
        "SELECT id FROM tasks WHERE ifnull(owner, '') = ifnull(?, '') AND name = ?", (owner, name)
    ).fetchone()
    return None if row is None else row[0]


def claim_name(conn: sqlite3.Connection, task_id: str, owner: str | None, name: str | None) -> None:
    """Raise NameTaken when another task of `owner` is called `name` (inside the writing transaction)."""
    if name is None:
        return
    holder = name_holder(conn, owner, name)
    if holder is not None and holder != task_id:
        raise NameTaken(name, holder)
