"""The task store, run against both backends (SQLite file and a real redis-server)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis

from app.store import (
    RedisStore,
    SqliteStore,
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
        "name": "antonyms",
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
    assert await store.acquire_lock("t", "w1", 0.2)
    assert not await store.acquire_lock("t", "w2", 30)
    await asyncio.sleep(0.35)
    assert await store.acquire_lock("t", "w2", 30)
    assert not await store.refresh_lock("t", "w1", 30)  # w1 lost it


async def test_refresh_only_by_holder(store: TaskStore) -> None:
    assert await store.acquire_lock("t", "w1", 0.4)
    assert await store.refresh_lock("t", "w2", 30) is False
    assert await store.refresh_lock("t", "w1", 5) is True
    await asyncio.sleep(0.6)  # past the original ttl: the refresh kept it
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
