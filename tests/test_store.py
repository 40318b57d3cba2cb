"""The task store, run against both backends (SQLite file and a real redis-server)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis

from app.store import (
    NameTaken,
    RedisStore,
    SqliteStore,
    StoreFull,
    StoreUnavailable,
    TaskRecord,
    TaskStore,
    open_store,
)

if TYPE_CHECKING:
    from tests.store_fixtures import StoreBackend

# Registered by name, so a conftest that also lists it does not load it twice.
pytest_plugins = ["tests.store_fixtures"]

REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_record(task_id: str = "t1", **overrides: Any) -> TaskRecord:
    now = time.time()
    fields: dict[str, Any] = {
        "id": task_id,
        "owner": None,
        "name": f"antonyms {task_id}",  # names are unique per owner
        "method": "task_vector",
        "spec": {"demonstrations": [{"input": "hot", "output": "cold"}], "options": {"k": 3}, "empty": []},
        "fingerprint": "fp-abc",
        "created_at": now,
        "updated_at": now,
    }
    fields.update(overrides)
    return TaskRecord(**fields)


# records


async def test_create_get_round_trip(store: TaskStore) -> None:
    rec = make_record(progress={"step": 0}, owner="key-1")
    assert await store.get(rec.id) is None
    assert await store.create(rec) is True
    got = await store.get(rec.id)
    assert got == rec
    assert got is not None and got.spec["empty"] == []  # JSON keeps empty lists as lists


async def test_create_twice_keeps_first(store: TaskStore) -> None:
    first = make_record(name="first")
    assert await store.create(first) is True
    assert await store.create(make_record(name="second", method="icv")) is False
    assert await store.get(first.id) == first
    assert [r.name for r in await store.list(all_owners=True)] == ["first"]


async def test_update_partial_fields(store: TaskStore) -> None:
    rec = make_record(updated_at=time.time() - 100)
    await store.create(rec)
    new = await store.update(rec.id, status="running", progress={"step": 3}, attempts=1)
    assert new is not None
    assert (new.status, new.progress, new.attempts) == ("running", {"step": 3}, 1)
    assert new.updated_at > rec.updated_at
    assert new.spec == rec.spec and new.name == rec.name and new.created_at == rec.created_at
    assert await store.get(rec.id) == new

    done = await store.update(rec.id, status="ready", summary={"layer": 5}, progress=None)
    assert done is not None and done.progress is None and done.attempts == 1
    assert done.summary == {"layer": 5}


async def test_update_missing_and_invalid(store: TaskStore) -> None:
    assert await store.update("nope", status="running") is None
    rec = make_record()
    await store.create(rec)
    with pytest.raises(ValueError, match="unknown"):
        await store.update(rec.id, colour="red")
    with pytest.raises(ValueError, match="id"):
        await store.update(rec.id, id="other")
    with pytest.raises(ValueError):  # pydantic ValidationError is a ValueError
        await store.update(rec.id, status="exploded")
    assert await store.get(rec.id) == rec


async def test_concurrent_updates_of_different_fields_all_land(store: TaskStore) -> None:
    rec = make_record()
    await store.create(rec)
    changes: list[dict[str, Any]] = [
        {"status": "running"},
        {"name": "renamed"},
        {"error": "none yet"},
        {"progress": {"step": 7}},
        {"summary": {"layer": 2}},
        {"attempts": 4},
    ] * 3
    results = await asyncio.gather(*(store.update(rec.id, **c) for c in changes))
    assert all(r is not None for r in results)
    final = await store.get(rec.id)
    assert final is not None
    for c in changes:
        for k, v in c.items():
            assert getattr(final, k) == v, k


async def test_list_newest_first_and_owner_filter(store: TaskStore) -> None:
    recs = [
        make_record("a1", owner="alice", created_at=100.0),
        make_record("b1", owner="bob", created_at=300.0),
        make_record("a2", owner="alice", created_at=200.0),
        make_record("n1", owner=None, created_at=150.0),
        make_record("a3", owner="alice", created_at=400.0),
    ]
    for r in recs:
        assert await store.create(r)
    assert [r.id for r in await store.list(all_owners=True)] == ["a3", "b1", "a2", "n1", "a1"]
    assert [r.id for r in await store.list(owner="alice")] == ["a3", "a2", "a1"]
    assert [r.id for r in await store.list(owner="bob")] == ["b1"]
    assert [r.id for r in await store.list()] == ["n1"]  # owner None: the open server's tasks
    assert await store.list(owner="carol") == []
    assert [r.id for r in await store.list(owner="bob", all_owners=True)][:2] == ["a3", "b1"]


async def test_list_ties_break_by_id_descending(store: TaskStore) -> None:
    for task_id in ("x", "z", "y"):
        await store.create(make_record(task_id, created_at=5.0))
    assert [r.id for r in await store.list(all_owners=True)] == ["z", "y", "x"]


async def test_delete_removes_record_vector_and_lock(store: TaskStore) -> None:
    rec = make_record()
    await store.create(rec)
    await store.put_vector(rec.id, b"vector")
    assert await store.acquire_lock(rec.id, "w1", 30)
    assert await store.delete(rec.id) is True
    assert await store.get(rec.id) is None
    assert await store.get_vector(rec.id) is None
    assert await store.list(all_owners=True) == []
    assert await store.acquire_lock(rec.id, "w2", 30)  # the lock went too
    assert await store.delete(rec.id) is False
    assert await store.create(rec) is True  # the id can be registered again


# vectors


async def test_vector_bytes_round_trip_exactly(store: TaskStore) -> None:
    rec = make_record()
    await store.create(rec)
    assert await store.get_vector(rec.id) is None
    data = os.urandom(1 << 20)
    await store.put_vector(rec.id, data)
    got = await store.get_vector(rec.id)
    assert type(got) is bytes and got == data
    other = bytes(range(256)) * 16 + b"\x00\r\n\xff"
    await store.put_vector(rec.id, other)  # overwrite
    assert await store.get_vector(rec.id) == other


async def test_put_vector_without_record_is_a_no_op(store: TaskStore) -> None:
    await store.put_vector("deleted-meanwhile", b"late worker")
    assert await store.get_vector("deleted-meanwhile") is None


# locks


async def test_lock_is_exclusive(store: TaskStore) -> None:
    assert await store.acquire_lock("t", "w1", 30) is True
    assert await store.acquire_lock("t", "w2", 30) is False
    assert await store.acquire_lock("t", "w1", 30) is False  # not re-entrant
    assert await store.acquire_lock("other", "w2", 30) is True


async def test_lock_expires(store: TaskStore) -> None:
    assert await store.acquire_lock("t", "w1", 0.5)  # ttls leave room for a slow CI machine
    assert not await store.acquire_lock("t", "w2", 30)
    await asyncio.sleep(0.7)
    assert await store.acquire_lock("t", "w2", 30)
    assert not await store.refresh_lock("t", "w1", 30)  # w1 lost it


async def test_refresh_only_by_holder(store: TaskStore) -> None:
    assert await store.acquire_lock("t", "w1", 1.0)
    assert await store.refresh_lock("t", "w2", 30) is False
    assert await store.refresh_lock("t", "w1", 5) is True
    await asyncio.sleep(1.2)  # past the original ttl: the refresh kept it
    assert await store.acquire_lock("t", "w2", 30) is False
    assert await store.refresh_lock("missing", "w1", 5) is False


async def test_release_only_by_holder(store: TaskStore) -> None:
    assert await store.acquire_lock("t", "w1", 30)
    await store.release_lock("t", "w2")
    assert await store.acquire_lock("t", "w2", 30) is False
    await store.release_lock("t", "w1")
    assert await store.acquire_lock("t", "w2", 30) is True
    await store.release_lock("t", "w1")  # w1 no longer holds it: w2 keeps it
    assert await store.refresh_lock("t", "w2", 30) is True
    await store.release_lock("never-locked", "w1")  # harmless


# concurrency


async def test_concurrent_create_one_winner(store: TaskStore) -> None:
    results = await asyncio.gather(*(store.create(make_record("same", name=f"n{i}")) for i in range(20)))
    assert sum(results) == 1
    winner = results.index(True)
    got = await store.get("same")
    assert got is not None and got.name == f"n{winner}"


async def test_concurrent_lock_one_winner(store: TaskStore) -> None:
    results = await asyncio.gather(*(store.acquire_lock("same", f"w{i}", 30) for i in range(20)))
    assert sum(results) == 1


_CHILD = """
import asyncio, json, sys, time
from pathlib import Path
from app.store import RedisStore, SqliteStore, TaskRecord

async def main(cfg):
    if cfg["kind"] == "redis":
        store = RedisStore(cfg["url"], prefix=cfg["prefix"])
    else:
        store = SqliteStore(Path(cfg["path"]))
    assert await store.ping()
    print("ready", flush=True)
    sys.stdin.readline()
    if cfg["op"] == "create":
        now = time.time()
        rec = TaskRecord(id=cfg["id"], name=cfg["who"], method="m", spec={}, fingerprint="f",
                         created_at=now, updated_at=now)
        ok = await store.create(rec)
    else:
        ok = await store.acquire_lock(cfg["id"], cfg["who"], 30)
    print("result " + json.dumps(ok), flush=True)
    await store.close()

asyncio.run(main(json.loads(sys.argv[1])))
"""


async def _race_in_processes(backend: StoreBackend, op: str, n: int = 6) -> list[bool]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    procs = []
    for i in range(n):
        cfg = {**backend.config, "kind": backend.kind, "op": op, "id": "raced", "who": f"p{i}"}
        procs.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                _CHILD,
                json.dumps(cfg),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                cwd=REPO_ROOT,
                env=env,
            )
        )
    try:
        for p in procs:  # everyone connected before anyone goes
            assert p.stdout is not None
            line = await asyncio.wait_for(p.stdout.readline(), timeout=120)
            assert line.strip() == b"ready", line
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(b"go\n")
        await asyncio.gather(*(p.stdin.drain() for p in procs if p.stdin is not None))
        results = []
        for p in procs:
            out, _ = await asyncio.wait_for(p.communicate(), timeout=60)
            assert p.returncode == 0
            results.append(json.loads(out.decode().split("result ", 1)[1]))
        return results
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()


async def test_processes_race_on_create(store_backend: StoreBackend) -> None:
    results = await _race_in_processes(store_backend, "create")
    assert sum(results) == 1, results
    s = store_backend.open()
    try:
        got = await s.get("raced")
        assert got is not None and got.name == f"p{results.index(True)}"
    finally:
        await s.close()


async def test_processes_race_on_lock(store_backend: StoreBackend) -> None:
    results = await _race_in_processes(store_backend, "lock")
    assert sum(results) == 1, results
    s = store_backend.open()
    try:
        winner = f"p{results.index(True)}"
        assert await s.refresh_lock("raced", winner, 30)
        assert not await s.acquire_lock("raced", "parent", 30)
    finally:
        await s.close()


# backend specifics


async def test_ping(store: TaskStore) -> None:
    assert await store.ping() is True


async def test_sqlite_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "data" / "tasks.sqlite3"
    rec = make_record(owner="alice")
    data = os.urandom(4096)
    s1 = SqliteStore(path)
    await s1.create(rec)
    await s1.put_vector(rec.id, data)
    await s1.acquire_lock(rec.id, "w1", 60)
    updated = await s1.update(rec.id, status="ready", summary={"layer": 1})
    await s1.close()

    s2 = SqliteStore(path)
    try:
        assert await s2.get(rec.id) == updated
        assert await s2.get_vector(rec.id) == data
        assert [r.id for r in await s2.list(owner="alice")] == [rec.id]
        assert not await s2.acquire_lock(rec.id, "w2", 60)  # an unexpired lock persists too
    finally:
        await s2.close()


async def test_sqlite_unopenable_path_is_unavailable(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path)  # a directory, not a database file
    try:
        assert await s.ping() is False
        with pytest.raises(StoreUnavailable):
            await s.get("t")
    finally:
        await s.close()


async def test_closed_sqlite_store_is_unavailable(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "tasks.sqlite3")
    await s.close()
    assert await s.ping() is False
    with pytest.raises(StoreUnavailable):
        await s.get("t")


async def test_redis_records_are_plain_json(redis_url: str) -> None:
    prefix = "json-check:"
    s = RedisStore(redis_url, prefix=prefix)
    client = redis.Redis.from_url(redis_url)
    try:
        rec = make_record()
        await s.create(rec)
        raw = client.get(f"{prefix}task:{rec.id}")
        assert isinstance(raw, bytes)
        assert json.loads(raw)["id"] == rec.id
        assert client.zscore(f"{prefix}tasks", rec.id) == rec.created_at
    finally:
        client.delete(f"{prefix}task:t1", f"{prefix}tasks")
        client.close()
        await s.close()


async def test_redis_unreachable_raises_store_unavailable() -> None:
    s = RedisStore(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    try:
        t0 = time.monotonic()
        assert await s.ping() is False  # ping reports, it does not raise
        for call in (s.get("t"), s.create(make_record()), s.list(), s.acquire_lock("t", "w", 1)):
            with pytest.raises(StoreUnavailable):
                await call
        assert time.monotonic() - t0 < 10  # fails fast enough for a 503
    finally:
        await s.close()


async def test_open_store_picks_backend(tmp_path: Path, redis_url: str) -> None:
    sq = open_store(None, tmp_path / "d")
    rs = open_store(redis_url, tmp_path / "d")
    try:
        assert isinstance(sq, SqliteStore) and sq.path == tmp_path / "d" / "tasks.sqlite3"
        assert isinstance(rs, RedisStore)
        assert isinstance(sq, TaskStore) and isinstance(rs, TaskStore)
        assert await sq.ping() and await rs.ping()
    finally:
        await sq.close()
        await rs.close()


# create with a vector, finish, count, pages, unfinished


async def test_create_with_vector_is_one_step(store: TaskStore) -> None:
    rec = make_record(status="ready", summary={"layer": 1})
    data = os.urandom(50_000)
    assert await store.create(rec, data) is True
    assert await store.get(rec.id) == rec and await store.get_vector(rec.id) == data
    assert await store.create(make_record(name="other"), b"other vector") is False  # nothing of the loser lands
    assert await store.get(rec.id) == rec and await store.get_vector(rec.id) == data
    assert await store.unfinished() == []  # created ready


async def test_finish_writes_vector_and_fields_together(store: TaskStore) -> None:
    rec = make_record(status="running", progress={"step": 3})
    await store.create(rec)
    assert await store.unfinished() == [rec.id]
    data = os.urandom(20_000)
    done = await store.finish(rec.id, data, status="ready", summary={"layer": 4}, progress=None)
    assert done is not None and (done.status, done.summary, done.progress) == ("ready", {"layer": 4}, None)
    assert await store.get(rec.id) == done and await store.get_vector(rec.id) == data
    assert await store.unfinished() == []
    with pytest.raises(ValueError):  # a bad field writes nothing, not even the vector
        await store.finish(rec.id, b"bad", status="exploded")
    assert await store.get(rec.id) == done and await store.get_vector(rec.id) == data


async def test_finish_of_a_deleted_task_writes_nothing(store: TaskStore) -> None:
    assert await store.finish("gone", b"late vector", status="ready") is None
    assert await store.get("gone") is None and await store.get_vector("gone") is None
    assert await store.list(all_owners=True) == [] and await store.count(None) == 0


async def test_finish_racing_delete_never_leaves_half_a_task(store: TaskStore) -> None:
    for i in range(15):
        rec = make_record(f"race{i}", status="running")
        await store.create(rec)
        finished, _deleted = await asyncio.gather(
            store.finish(rec.id, b"v" * 1000, status="ready"), store.delete(rec.id)
        )
        got, vec = await store.get(rec.id), await store.get_vector(rec.id)
        # delete first: finish found nothing; finish first: delete removed both. Never a vector without its record.
        assert got is None and vec is None, (finished, got, vec)
    assert await store.unfinished() == [] and await store.count(None) == 0


async def test_count_per_owner(store: TaskStore) -> None:
    for i in range(3):
        await store.create(make_record(f"a{i}", owner="alice"))
    await store.create(make_record("b0", owner="bob"))
    await store.create(make_record("n0"))
    assert [await store.count(o) for o in ("alice", "bob", None, "carol")] == [3, 1, 1, 0]
    await store.delete("a1")
    await store.update("b0", owner="alice")  # an owner change moves the task between counts
    assert [await store.count(o) for o in ("alice", "bob", None)] == [3, 0, 1]
    assert {r.id for r in await store.list(owner="alice")} == {"a0", "a2", "b0"}
    assert await store.list(owner="bob") == []


async def test_list_pages(store: TaskStore) -> None:
    for i in range(7):
        await store.create(make_record(f"a{i}", owner="alice", created_at=100.0 + i))
        await store.create(make_record(f"b{i}", owner="bob", created_at=100.5 + i))
    newest_first = [f"a{i}" for i in reversed(range(7))]
    pages = [[r.id for r in await store.list(owner="alice", offset=o, limit=3)] for o in (0, 3, 6, 9)]
    assert pages == [newest_first[:3], newest_first[3:6], newest_first[6:], []]
    assert [r.id for r in await store.list(owner="alice", offset=5)] == newest_first[5:]
    assert await store.list(owner="alice", limit=0) == []
    everyone = [r.id for r in await store.list(all_owners=True, offset=2, limit=4)]
    assert everyone == ["b5", "a5", "b4", "a4"]
    with pytest.raises(ValueError):
        await store.list(offset=-1)


async def test_unfinished_follows_status(store: TaskStore) -> None:
    await store.create(make_record("p"))  # pending by default
    await store.create(make_record("r", status="running"))
    await store.create(make_record("f", status="failed"))
    await store.create(make_record("d", status="ready"))
    assert sorted(await store.unfinished()) == ["p", "r"]
    await store.update("p", status="running")
    await store.update("r", status="failed", error="boom")
    await store.update("f", status="pending")  # a failed task posted again
    assert sorted(await store.unfinished()) == ["f", "p"]
    await store.delete("p")
    await store.finish("f", b"vec", status="ready")
    assert await store.unfinished() == []


async def _corrupt(backend: StoreBackend, task_id: str, raw: str) -> None:
    """Overwrite a stored record with `raw`, behind the store's back."""
    if backend.kind == "redis":
        client = redis.Redis.from_url(backend.config["url"])
        try:
            client.set(f"{backend.config['prefix']}task:{task_id}", raw)
        finally:
            client.close()
    else:
        conn = sqlite3.connect(backend.config["path"])
        with conn:
            conn.execute("UPDATE tasks SET data = ? WHERE id = ?", (raw, task_id))
        conn.close()


async def test_unreadable_records_are_skipped_not_fatal(
    store_backend: StoreBackend, store: TaskStore, caplog: pytest.LogCaptureFixture
) -> None:
    for i, task_id in enumerate(("good1", "junk", "wrongtype", "good2")):
        await store.create(make_record(task_id, owner="alice", created_at=100.0 + i, status="running"))
    await _corrupt(store_backend, "junk", "{not json")
    await _corrupt(
        store_backend, "wrongtype", json.dumps({**make_record("wrongtype", owner="alice").model_dump(), "status": 42})
    )
    with caplog.at_level(logging.WARNING, logger="app.store"):
        assert [r.id for r in await store.list(owner="alice")] == ["good2", "good1"]
        assert [r.id for r in await store.list(all_owners=True)] == ["good2", "good1"]
        assert await store.get("junk") is None and await store.get("wrongtype") is None
        assert await store.update("junk", status="ready") is None  # cannot read it: cannot update it
    assert "junk" in caplog.text and "wrongtype" in caplog.text
    assert await store.delete("junk") is True and await store.delete("wrongtype") is True  # still removable
    # Redis cannot tell whose index held a record that is not even JSON: the next list drops the stray entry.
    assert [r.id for r in await store.list(owner="alice")] == ["good2", "good1"]
    assert await store.count("alice") == 2
    assert sorted(await store.unfinished()) == ["good1", "good2"]


# faults become StoreUnavailable, fast


async def test_sqlite_locked_file_is_unavailable_quickly(tmp_path: Path) -> None:
    path = tmp_path / "tasks.sqlite3"
    s = SqliteStore(path, busy_timeout_s=0.3)
    await s.create(make_record("t"))
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")  # another process holds the file
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable, match="locked"):
            await s.create(make_record("u"))
        with pytest.raises(StoreUnavailable):
            await s.finish("t", b"v", status="ready")
        assert time.monotonic() - t0 < 3
        other.execute("ROLLBACK")
        assert await s.finish("t", b"v", status="ready") is not None  # the same connection works again
        assert await s.get_vector("t") == b"v"
    finally:
        other.close()
        await s.close()


async def test_sqlite_opened_while_another_process_writes_before_wal(tmp_path: Path) -> None:
    """The switch to WAL fails at once, without SQLite's busy handler, while another connection
    holds a pending write (as happens when replicas open a new file together): opening must wait."""
    path = tmp_path / "tasks.sqlite3"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE early (x)")
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO early VALUES (1)")
    release = threading.Timer(0.3, lambda: other.execute("COMMIT"))
    release.start()
    s = SqliteStore(path, busy_timeout_s=5.0)
    try:
        assert await s.ping() is True
        assert await s.create(make_record("t"))
    finally:
        release.join()
        other.close()
        await s.close()


async def test_sqlite_full_is_store_full(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "tasks.sqlite3")
    try:
        await s.create(make_record("t"))
        pages = await s._run(lambda conn: conn.execute("PRAGMA page_count").fetchone()[0])
        await s._run(lambda conn: conn.execute(f"PRAGMA max_page_count = {pages}"))  # as good as a full disk
        with pytest.raises(StoreFull):
            await s.finish("t", os.urandom(1 << 20), status="ready")
        got = await s.get("t")  # nothing half-written
        assert got is not None and got.status == "pending" and await s.get_vector("t") is None
    finally:
        await s.close()


async def test_sqlite_garbage_file_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "tasks.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    s = SqliteStore(path)
    try:
        assert await s.ping() is False
        with pytest.raises(StoreUnavailable):
            await s.count(None)
        path.unlink()  # repaired: the next call opens a fresh file
        assert await s.create(make_record()) is True
    finally:
        await s.close()


async def test_sqlite_file_from_before_the_status_column(tmp_path: Path) -> None:
    path = tmp_path / "tasks.sqlite3"
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            "CREATE TABLE tasks (id TEXT PRIMARY KEY, owner TEXT, created_at REAL NOT NULL, data TEXT NOT NULL)"
        )
        for task_id, status in (("p", "pending"), ("d", "ready")):
            conn.execute(
                "INSERT INTO tasks VALUES (?, NULL, 1.0, ?)", (task_id, make_record(task_id, status=status).to_json())
            )
    conn.close()
    s = SqliteStore(path)
    try:
        assert await s.unfinished() == ["p"] and await s.count(None) == 2
    finally:
        await s.close()


async def test_redis_store_from_before_the_indexes(redis_url: str) -> None:
    prefix = f"old:{time.time_ns()}:"
    client = redis.Redis.from_url(redis_url)
    recs = [make_record("p", owner="alice", created_at=1.0), make_record("d", status="ready", created_at=2.0)]
    for rec in recs:  # what the previous version wrote: records and one sorted set
        client.set(f"{prefix}task:{rec.id}", rec.to_json())
        client.zadd(f"{prefix}tasks", {rec.id: rec.created_at})
    s = RedisStore(redis_url, prefix=prefix)
    try:
        assert [r.id for r in await s.list(owner="alice")] == ["p"]
        assert await s.count(None) == 1 and await s.unfinished() == ["p"]
    finally:
        await s.close()
        client.delete(*client.keys(f"{prefix}*"))
        client.close()


async def _assert_unavailable_within(seconds: float, *calls: Any) -> float:
    t0 = time.monotonic()
    for call in calls:
        with pytest.raises(StoreUnavailable):
            await call
    elapsed = time.monotonic() - t0
    assert elapsed < seconds, elapsed
    return elapsed


async def test_redis_killed_then_restarted(redis_server_factory: Any) -> None:
    server = redis_server_factory()
    s = RedisStore(server.url, prefix="k:")
    try:
        await s.create(make_record("t"))
        server.kill()
        # refused connections: each call fails at once
        await _assert_unavailable_within(2.5, s.get("t"), s.create(make_record("u")), s.unfinished())
        assert await s.ping() is False
        server.restart(empty=True)  # no persistence: it comes back empty, without the scripts it had loaded
        assert await s.ping() is True
        assert await s.get("t") is None
        assert await s.create(make_record("t")) is True  # scripts load again by themselves (NOSCRIPT)
        assert await s.finish("t", b"v", status="ready") is not None
    finally:
        await s.close()


async def test_redis_paused_answers_within_the_deadline(redis_server_factory: Any) -> None:
    server = redis_server_factory()
    s = RedisStore(server.url, prefix="p:")
    try:
        await s.create(make_record("t"))
        server.pause()
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await s.get("t")
        first = time.monotonic() - t0
        assert first < 2.6, first  # the deadline: connect + socket timeouts and one retry, bounded
        # right after, calls fail at once instead of each waiting for a timeout
        await _assert_unavailable_within(0.5, s.update("t", status="running"), s.count(None))
        fresh = RedisStore(server.url, prefix="p:")  # no pooled connection yet: it connects, then nothing answers
        try:
            await _assert_unavailable_within(2.6, fresh.list())
        finally:
            await fresh.close()
        assert await s.ping() is False
        server.resume()
        assert await s.ping() is True
        assert (await s.update("t", status="running")) is not None
        assert await s.unfinished() == ["t"]
    finally:
        if server.paused:
            server.resume()
        await s.close()


async def test_redis_refusals_are_unavailable(redis_server_factory: Any, tmp_path: Path) -> None:
    server = redis_server_factory("--busy-reply-threshold", "100", "--enable-protected-configs", "yes")
    s = RedisStore(server.url, prefix="r:")
    admin = server.client()
    try:
        await s.create(make_record("t"))
        await s.put_vector("t", b"v")

        admin.config_set("maxmemory", 1)  # full, with noeviction (the default policy)
        await _assert_unavailable_within(2.5, s.create(make_record("u")), s.finish("t", b"w", status="ready"))
        with pytest.raises(StoreFull):  # a StoreUnavailable that says why
            await s.update("t", status="running")
        assert (await s.get("t")) is not None and await s.get_vector("t") == b"v"  # reads still work
        assert await s.get("u") is None and await s.count(None) == 1  # nothing half-written
        admin.config_set("maxmemory", 0)

        admin.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))  # READONLY
        await _assert_unavailable_within(2.5, s.update("t", status="running"), s.delete("t"))
        admin.execute_command("REPLICAOF", "NO", "ONE")

        gone = tmp_path / "gone"
        gone.mkdir()
        admin.config_set("dir", str(gone))
        gone.rmdir()
        admin.config_set("save", "3600 1")
        with contextlib.suppress(redis.ResponseError):
            admin.bgsave()
        deadline = time.monotonic() + 10
        while admin.info("persistence")["rdb_last_bgsave_status"] != "err" and time.monotonic() < deadline:
            time.sleep(0.05)
        await _assert_unavailable_within(2.5, s.create(make_record("u")))  # MISCONF
        admin.config_set("stop-writes-on-bgsave-error", "no")

        admin.config_set("save", "")

        def spin() -> None:  # a script that never returns: every other command answers BUSY
            with server.client() as c, contextlib.suppress(redis.ResponseError):
                c.eval("while true do end", 0)

        busy = threading.Thread(target=spin)
        busy.start()
        time.sleep(0.3)
        await _assert_unavailable_within(2.5, s.get("t"))
        admin.script_kill()
        busy.join(timeout=10)
        assert await s.create(make_record("u")) is True and await s.count(None) == 2
    finally:
        admin.close()
        await s.close()


async def test_redis_large_vector_round_trip(redis_url: str) -> None:
    # redis-py bounds a whole command by its socket timeout: vectors travel on a pool with a long one.
    s = RedisStore(redis_url, prefix=f"big:{time.time_ns()}:")
    try:
        data = os.urandom(48 << 20)
        assert await s.create(make_record("big", status="ready"), data)
        assert await s.get_vector("big") == data
        assert await s.finish("big", data[::-1], status="ready") is not None
        assert await s.get_vector("big") == data[::-1]
    finally:
        await s.delete("big")
        await s.close()


# names: unique per owner, written with the record


async def test_a_name_is_unique_per_owner(store: TaskStore) -> None:
    assert await store.create(make_record("a1", owner="alice", name="antonyms"))
    with pytest.raises(NameTaken) as taken:
        await store.create(make_record("a2", owner="alice", name="antonyms"), b"vector")
    assert (taken.value.name, taken.value.holder) == ("antonyms", "a1")
    assert await store.get("a2") is None and await store.get_vector("a2") is None  # nothing of it written
    assert await store.count("alice") == 1 and await store.list(owner="alice") == [await store.get("a1")]
    assert await store.create(make_record("b1", owner="bob", name="antonyms"))  # another owner's name
    assert await store.create(make_record("n1", owner=None, name="antonyms"))  # the open server's tasks too
    with pytest.raises(NameTaken):
        await store.create(make_record("n2", owner=None, name="antonyms"))
    assert await store.create(make_record("a1", owner="alice", name="other")) is False  # the id exists: no error
    assert await store.create(make_record("u1", owner="alice", name=None))
    assert await store.create(make_record("u2", owner="alice", name=None))  # any number of unnamed tasks
    found = [await store.find_name(o, "antonyms") for o in ("alice", "bob", None, "carol")]
    assert found == ["a1", "b1", "n1", None]


async def test_renaming_claims_the_new_name_and_frees_the_old(store: TaskStore) -> None:
    await store.create(make_record("a1", owner="alice", name="x"))
    await store.create(make_record("a2", owner="alice", name="y"))
    renamed = await store.update("a1", name="z")
    assert renamed is not None and renamed.name == "z"
    assert (await store.find_name("alice", "x"), await store.find_name("alice", "z")) == (None, "a1")
    before = await store.get("a2")
    with pytest.raises(NameTaken):
        await store.update("a2", name="z", status="running")  # nothing of the update lands
    assert await store.get("a2") == before
    assert (await store.update("a2", name="x")).name == "x"  # a freed name is free
    assert (await store.update("a1", name=None)).name is None
    assert await store.find_name("alice", "z") is None
    assert (await store.update("a2", progress={"step": 1})).name == "x"  # other updates keep the name
    assert await store.find_name("alice", "x") == "a2"


async def test_deleting_a_task_frees_its_name(store_backend: StoreBackend, store: TaskStore) -> None:
    await store.create(make_record("a1", owner="alice", name="x"))
    assert await store.delete("a1")
    assert await store.find_name("alice", "x") is None
    assert await store.create(make_record("a2", owner="alice", name="x"))
    # A record that cannot be read is still deleted with its name.
    await _corrupt(store_backend, "a2", "{not json")
    assert await store.delete("a2")
    assert await store.create(make_record("a3", owner="alice", name="x"))
    assert await store.find_name("alice", "x") == "a3"


async def test_take_name_moves_it_in_one_step(store: TaskStore) -> None:
    await store.create(make_record("a1", owner="alice", name="antonyms"))
    await store.create(make_record("a2", owner="alice", name="draft"))
    await store.create(make_record("b1", owner="bob", name="antonyms"))
    moved = await store.take_name("a2", "antonyms")
    assert moved is not None and moved.name == "antonyms"
    assert (await store.get("a1")).name is None and (await store.get("a2")).name == "antonyms"
    assert await store.find_name("alice", "antonyms") == "a2" and await store.find_name("alice", "draft") is None
    assert await store.find_name("bob", "antonyms") == "b1"  # another owner's task keeps it
    assert (await store.take_name("a2", "antonyms")).name == "antonyms"  # its own name: nothing changes
    assert (await store.take_name("a1", "free")).name == "free"  # nobody holds it: a plain rename
    assert await store.take_name("missing", "antonyms") is None
    assert await store.find_name("alice", "antonyms") == "a2"


async def test_concurrent_claims_of_one_name_one_winner(store: TaskStore) -> None:
    async def create(i: int) -> str | None:
        try:
            return f"c{i}" if await store.create(make_record(f"c{i}", owner="alice", name="race")) else None
        except NameTaken:
            return None

    winners = [w for w in await asyncio.gather(*(create(i) for i in range(12))) if w]
    assert len(winners) == 1 and await store.find_name("alice", "race") == winners[0]
    assert await store.count("alice") == 1

    for i in range(8):
        await store.create(make_record(f"r{i}", owner="bob", name=f"r{i}"))

    async def rename(i: int) -> str | None:
        try:
            return f"r{i}" if await store.update(f"r{i}", name="race") else None
        except NameTaken:
            return None

    renamed = [w for w in await asyncio.gather(*(rename(i) for i in range(8))) if w]
    assert len(renamed) == 1 and await store.find_name("bob", "race") == renamed[0]
    names = sorted(r.name for r in await store.list(owner="bob"))
    assert names == sorted(["race"] + [f"r{i}" for i in range(8) if f"r{i}" not in renamed])

    takers = await asyncio.gather(*(store.take_name(f"r{i}", "taken") for i in range(8)))
    assert all(t is not None and t.name == "taken" for t in takers)  # each took it in turn: one holds it now
    holders = [r.id for r in await store.list(owner="bob") if r.name == "taken"]
    assert holders == [await store.find_name("bob", "taken")]


async def test_sqlite_file_from_before_names(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "tasks.sqlite3"
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            "CREATE TABLE tasks (id TEXT PRIMARY KEY, owner TEXT, created_at REAL NOT NULL, data TEXT NOT NULL, "
            "status TEXT)"
        )
        for task_id, owner, created_at in (("new", None, 2.0), ("old", None, 1.0), ("bob", "bob", 3.0)):
            rec = make_record(task_id, owner=owner, name="shared", created_at=created_at)
            conn.execute(
                "INSERT INTO tasks VALUES (?, ?, ?, ?, 'pending')", (task_id, owner, created_at, rec.to_json())
            )
    conn.close()
    s = SqliteStore(path)
    try:
        with caplog.at_level(logging.WARNING, logger="app.store"):
            assert await s.find_name(None, "shared") == "old"  # the oldest keeps a shared name
        assert "new" in caplog.text
        assert (await s.get("new")).name is None and (await s.get("old")).name == "shared"
        assert await s.find_name("bob", "shared") == "bob"
        with pytest.raises(NameTaken):
            await s.update("new", name="shared")
    finally:
        await s.close()


async def test_redis_store_from_before_names(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    prefix = f"old:{time.time_ns()}:"
    client = redis.Redis.from_url(redis_url)
    recs = [
        make_record("new", name="shared", created_at=2.0),
        make_record("old", name="shared", created_at=1.0),
        make_record("bob", owner="bob", name="shared", created_at=3.0),
    ]
    for rec in recs:  # what the previous version wrote: records and their indexes, no names
        client.set(f"{prefix}task:{rec.id}", rec.to_json())
        client.zadd(f"{prefix}tasks", {rec.id: rec.created_at})
        client.zadd(f"{prefix}owner:{rec.owner or '-'}", {rec.id: rec.created_at})
    client.set(f"{prefix}schema", "2")
    s = RedisStore(redis_url, prefix=prefix)
    try:
        with caplog.at_level(logging.WARNING, logger="app.store"):
            assert await s.find_name(None, "shared") == "old"  # the oldest keeps a shared name
        assert "new" in caplog.text
        assert (await s.get("new")).name is None and (await s.get("old")).name == "shared"
        assert await s.find_name("bob", "shared") == "bob"
        with pytest.raises(NameTaken):
            await s.update("new", name="shared")
    finally:
        await s.close()
        client.delete(*client.keys(f"{prefix}*"))
        client.close()
