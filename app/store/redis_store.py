"""TaskStore on Redis (redis.asyncio): what replicas share. Records are JSON, vectors raw bytes.

The keys are in `redis_keys.py`. Every write that touches a record and its indexes is one Lua script
(`redis_scripts.py`), so nothing is ever seen half-written. Read-modify-write (update, finish, delete)
is compare-and-swap: read the record, compute the new one in Python, and let a script write it only
if the stored JSON is still the one that was read (else read again). Unlike WATCH/MULTI this keeps no
state on a connection, so a call cut off by its deadline leaves nothing behind. Nothing read from Redis is unpickled.

Every fault (unreachable, timed out, OOM under noeviction, READONLY replica, MISCONF, LOADING,
BUSY, anything else redis-py raises) becomes StoreUnavailable within `deadline_s` (calls that
carry a vector get more time in proportion to its size). After a connection fault, calls fail at
once for `fail_fast_s` instead of each waiting for a timeout. Vectors travel on a second
connection pool whose socket timeout is long enough for large payloads: redis-py bounds a whole
command's write, and a whole reply's read, by the socket timeout.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import redis_scripts as scripts
from .base import UNFINISHED, NameTaken, StoreFull, StoreUnavailable, TaskRecord, apply_update, parse_record
from .redis_keys import MGET_CHUNK, RedisKeys
from .redis_migration import SCHEMA_VERSION, build_indexes

log = logging.getLogger(__name__)

T = TypeVar("T")

# Faults that say the server is not there (as opposed to one that answered with an error).
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)

_BULK_BYTES_PER_S = 20e6  # the slowest transfer rate a vector call is given time for
_SWAP_ATTEMPTS = 200
_MIGRATION_DEADLINE_S = 60.0


def _ttl_ms(ttl_s: float) -> int:
    return max(1, round(ttl_s * 1000))


class RedisStore:
    """TaskStore backed by one Redis (or a Cluster with a hash-tagged prefix)."""

    def __init__(
        self,
        url: str,
        prefix: str = "steer:",
        *,
        connect_timeout_s: float = 0.5,
        socket_timeout_s: float = 0.75,
        retries: int = 1,
        deadline_s: float = 2.0,
        fail_fast_s: float = 1.0,
        bulk_socket_timeout_s: float = 10.0,
    ) -> None:
        self.prefix = prefix
        self._keys = RedisKeys(prefix)
        self.deadline_s = deadline_s
        self.fail_fast_s = fail_fast_s
        self._down_since: float | None = None  # monotonic time of the last connection fault
        self._schema_ok = False

        # One short retry: it reconnects a pooled connection that a Redis restart left dead. More
        # would only stretch an outage's answer: redis-py nests connect retries inside command ones.
        def client(socket_timeout: float) -> aioredis.Redis:
            return aioredis.Redis.from_url(
                url,
                decode_responses=False,
                socket_connect_timeout=connect_timeout_s,
                socket_timeout=socket_timeout,
                retry=Retry(ExponentialWithJitterBackoff(base=0.02, cap=0.1), retries),
                health_check_interval=30,
            )

        self._redis = client(socket_timeout_s)
        self._bulk = client(bulk_socket_timeout_s)  # only for calls that carry a vector
        # redis-py's Script runs EVALSHA and, on NOSCRIPT (a restarted Redis), loads the script again.
        self._create = self._redis.register_script(scripts.CREATE)
        self._swap = self._redis.register_script(scripts.SWAP)
        self._delete = self._redis.register_script(scripts.DELETE)
        self._take = self._redis.register_script(scripts.TAKE_NAME)
        self._free_stale_name = self._redis.register_script(scripts.FREE_STALE_NAME)
        self._prune = self._redis.register_script(scripts.PRUNE)
        self._put_vector = self._redis.register_script(scripts.PUT_VECTOR)
        self._refresh = self._redis.register_script(scripts.REFRESH)
        self._release = self._redis.register_script(scripts.RELEASE)

    # plumbing
    def _for(self, payload: bytes | int) -> float:
        """The deadline of a call that moves `payload` (bytes, or their number)."""
        size = payload if isinstance(payload, int) else len(payload)
        return self.deadline_s + size / _BULK_BYTES_PER_S

    async def _call(self, op: Callable[[], Awaitable[T]], *, deadline_s: float | None = None) -> T:
        """Run `op` against Redis within the deadline; every fault comes out as StoreUnavailable."""
        if self._down_since is not None and time.monotonic() - self._down_since < self.fail_fast_s:
            raise StoreUnavailable("redis unavailable (it failed moments ago)")
        try:
            if not self._schema_ok:
                if await asyncio.wait_for(self._redis.get(self._keys.schema), self.deadline_s) != SCHEMA_VERSION:
                    await asyncio.wait_for(build_indexes(self._redis, self._keys), _MIGRATION_DEADLINE_S)
                self._schema_ok = True
            result = await asyncio.wait_for(op(), deadline_s or self.deadline_s)
        except _UNREACHABLE as exc:
            self._down_since = time.monotonic()
            detail = str(exc) or "no answer within the deadline"
            raise StoreUnavailable(f"redis unavailable: {type(exc).__name__}: {detail}") from exc
        except OutOfMemoryError as exc:
            raise StoreFull(f"redis is full: {exc}") from exc
        except RedisError as exc:  # READONLY, MISCONF, LOADING, BUSY, NOPERM, ...
            raise StoreUnavailable(f"redis refused: {type(exc).__name__}: {exc}") from exc
        self._down_since = None
        return result

    # records
    async def get(self, task_id: str) -> TaskRecord | None:
        raw = await self._call(lambda: self._redis.get(self._keys.task(task_id)))
        return None if raw is None else parse_record(raw, task_id)

    async def create(self, record: TaskRecord, vector: bytes | None = None) -> bool:
        keys = [
            self._keys.task(record.id),
            self._keys.all,
            self._keys.owner(record.owner),
            self._keys.unfinished,
            self._keys.vec(record.id),
            self._keys.names(record.owner),
        ]
        args = [
            record.to_json(),
            repr(record.created_at),
            record.id,
            scripts.flag(record.status in UNFINISHED),
            scripts.flag(vector is not None),
            b"" if vector is None else bytes(vector),
            record.name or "",
        ]
        client = self._redis if vector is None else self._bulk
        deadline_s = None if vector is None else self._for(vector)
        return await self._call(lambda: self._create_named(record, keys, args, client), deadline_s=deadline_s)

    async def _create_named(
        self, record: TaskRecord, keys: builtins.list[str], args: builtins.list[Any], client: aioredis.Redis
    ) -> bool:
        while True:
            outcome = await self._create(keys=keys, args=args, client=client)
            if not isinstance(outcome, bytes):
                return bool(outcome)
            await self._name_taken(record.owner, record.name or "", outcome.decode())

    async def _name_taken(self, owner: str | None, name: str, holder: str) -> None:
        """Raise NameTaken, unless the holder is gone (a name a crashed or older writer left behind): then
        the name is freed and the caller tries again."""
        keys = [self._keys.names(owner), self._keys.task(holder)]
        if not await self._free_stale_name(keys=keys, args=[name, holder]):
            raise NameTaken(name, holder)
        log.warning("freed the name %r, left pointing at task %s, which is gone", name, holder)

    async def update(self, task_id: str, **fields: Any) -> TaskRecord | None:
        return await self._call(lambda: self._read_modify_write(task_id, fields, None))

    async def finish(self, task_id: str, vector: bytes, **fields: Any) -> TaskRecord | None:
        data = bytes(vector)
        return await self._call(lambda: self._read_modify_write(task_id, fields, data), deadline_s=self._for(data))

    async def _read_modify_write(self, task_id: str, fields: dict[str, Any], vector: bytes | None) -> TaskRecord | None:
        key = self._keys.task(task_id)
        for attempt in range(_SWAP_ATTEMPTS):
            raw = await self._redis.get(key)
            if raw is None:
                return None
            old = parse_record(raw, task_id)
            if old is None:
                return None
            new = apply_update(old, fields)
            owners = [self._keys.owner(old.owner), self._keys.owner(new.owner)]
            names = [self._keys.names(old.owner), self._keys.names(new.owner)]
            keys = [key, self._keys.all, *owners, self._keys.unfinished, self._keys.vec(task_id), *names]
            args = [
                raw,
                new.to_json(),
                task_id,
                repr(new.created_at),
                scripts.flag(new.status in UNFINISHED),
                scripts.flag(vector is not None),
                vector or b"",
                old.name or "",
                new.name or "",
                scripts.flag((old.owner, old.name) != (new.owner, new.name)),
            ]
            n = await self._swap(keys=keys, args=args, client=self._redis if vector is None else self._bulk)
            if isinstance(n, bytes):
                await self._name_taken(new.owner, new.name or "", n.decode())
                continue
            if n == 1:
                return new
            if n == 0:
                return None
            await asyncio.sleep(min(0.001 * attempt, 0.02))  # someone else wrote it meanwhile: read again
        raise StoreUnavailable(f"update of task {task_id} kept conflicting; gave up")

    async def take_name(self, task_id: str, name: str) -> TaskRecord | None:
        return await self._call(lambda: self._take_swap(task_id, name))

    async def _take_swap(self, task_id: str, name: str) -> TaskRecord | None:
        for attempt in range(_SWAP_ATTEMPTS):
            raw = await self._redis.get(self._keys.task(task_id))
            old = None if raw is None else parse_record(raw, task_id)
            if old is None:
                return None
            if old.name == name:
                return old
            holder = await self._redis.hget(self._keys.names(old.owner), name)
            holder_id = "" if holder is None else holder.decode()
            held, released = b"", b""
            if holder_id and holder_id != task_id:
                held = await self._redis.get(self._keys.task(holder_id)) or b""
                loser = parse_record(held, holder_id) if held else None
                # An unreadable (or vanished) holder's record is left as it is; only the index entry moves.
                held = held if loser is not None else b""
                released = b"" if loser is None else apply_update(loser, {"name": None}).to_json().encode()
            new = apply_update(old, {"name": name})
            keys = [self._keys.task(task_id), self._keys.names(old.owner), self._keys.task(holder_id or task_id)]
            args = [raw, new.to_json(), task_id, old.name or "", name, holder_id, held, released]
            n = await self._take(keys=keys, args=args)
            if n == 1:
                return new
            if n == 0:
                return None
            await asyncio.sleep(min(0.001 * attempt, 0.02))
        raise StoreUnavailable(f"renaming task {task_id} kept conflicting; gave up")

    async def find_name(self, owner: str | None, name: str) -> str | None:
        task_id = await self._call(lambda: self._redis.hget(self._keys.names(owner), name))
        return None if task_id is None else task_id.decode()

    async def count(self, owner: str | None) -> int:
        return int(await self._call(lambda: self._redis.zcard(self._keys.owner(owner))))

    async def list(
        self, owner: str | None = None, all_owners: bool = False, *, offset: int = 0, limit: int | None = None
    ) -> builtins.list[TaskRecord]:
        if offset < 0 or (limit is not None and limit < 0):
            raise ValueError("offset and limit must not be negative")
        if limit == 0:
            return []
        index = self._keys.all if all_owners else self._keys.owner(owner)
        stop = -1 if limit is None else offset + limit - 1
        return await self._call(lambda: self._page(index, offset, stop, None if all_owners else owner))

    async def _page(self, index: str, start: int, stop: int, owner: str | None) -> builtins.list[TaskRecord]:
        # ZREVRANGE orders equal scores by member descending: the same tie-break as SqliteStore.
        ids = [i.decode() for i in await self._redis.zrevrange(index, start, stop)]
        out: builtins.list[TaskRecord] = []
        gone: builtins.list[str] = []
        for first in range(0, len(ids), MGET_CHUNK):
            chunk = ids[first : first + MGET_CHUNK]
            for task_id, raw in zip(chunk, await self._redis.mget([self._keys.task(i) for i in chunk]), strict=True):
                if raw is None:
                    gone.append(task_id)
                    continue
                rec = parse_record(raw, task_id)
                if rec is not None and (index == self._keys.all or rec.owner == owner):
                    out.append(rec)
        if gone:  # deleted meanwhile (then this is a no-op) or lost: drop what points at nothing
            try:
                await self._prune(keys=[index, *(self._keys.task(i) for i in gone)], args=gone)
            except RedisError as exc:  # a read-only replica, say: the page is right all the same
                log.debug("could not prune %d stale index entries: %s", len(gone), exc)
        return out

    async def unfinished(self) -> builtins.list[str]:
        members = await self._call(lambda: self._redis.smembers(self._keys.unfinished))
        return sorted(m.decode() for m in members)

    async def delete(self, task_id: str) -> bool:
        return await self._call(lambda: self._delete_swap(task_id))

    async def _delete_swap(self, task_id: str) -> bool:
        for attempt in range(_SWAP_ATTEMPTS):
            raw = await self._redis.get(self._keys.task(task_id))
            owner, name = (None, "") if raw is None else self._owner_and_name_of_raw(raw, task_id)
            keys = [
                self._keys.task(task_id),
                self._keys.vec(task_id),
                self._keys.lock(task_id),
                self._keys.all,
                self._keys.owner(owner),
                self._keys.unfinished,
                self._keys.names(owner),
            ]
            n = await self._delete(keys=keys, args=[raw or b"", task_id, name])
            if n >= 0:
                return n == 1
            await asyncio.sleep(min(0.001 * attempt, 0.02))
        raise StoreUnavailable(f"delete of task {task_id} kept conflicting; gave up")

    @staticmethod
    def _owner_and_name_of_raw(raw: bytes, task_id: str) -> tuple[str | None, str]:
        """The owner and name ('' for none) of a stored record, read leniently: a corrupt record must still
        be deletable."""
        rec = parse_record(raw, task_id)
        if rec is not None:
            return rec.owner, rec.name or ""
        try:
            data = json.loads(raw)
            owner, name = data.get("owner"), data.get("name")
        except (ValueError, AttributeError):
            owner = name = None
        return (owner if isinstance(owner, str) else None), (name if isinstance(name, str) else "")

    # vectors
    async def put_vector(self, task_id: str, data: bytes) -> None:
        """Store the vector bytes; a no-op when the task record does not exist (deleted meanwhile)."""
        keys, blob = [self._keys.task(task_id), self._keys.vec(task_id)], bytes(data)
        await self._call(
            lambda: self._put_vector(keys=keys, args=[blob], client=self._bulk), deadline_s=self._for(blob)
        )

    async def get_vector(self, task_id: str) -> bytes | None:
        # Its size first (a quick call that fails fast when Redis is away), to give the transfer its time.
        size = await self._call(lambda: self._redis.strlen(self._keys.vec(task_id)))
        if not size:
            return None
        raw = await self._call(lambda: self._bulk.get(self._keys.vec(task_id)), deadline_s=self._for(int(size)))
        return None if raw is None else bytes(raw)

    # locks
    async def acquire_lock(self, task_id: str, holder: str, ttl_s: float) -> bool:
        return bool(
            await self._call(lambda: self._redis.set(self._keys.lock(task_id), holder, nx=True, px=_ttl_ms(ttl_s)))
        )

    async def refresh_lock(self, task_id: str, holder: str, ttl_s: float) -> bool:
        return bool(
            await self._call(lambda: self._refresh(keys=[self._keys.lock(task_id)], args=[holder, _ttl_ms(ttl_s)]))
        )

    async def release_lock(self, task_id: str, holder: str) -> None:
        await self._call(lambda: self._release(keys=[self._keys.lock(task_id)], args=[holder]))

    # lifecycle
    async def ping(self) -> bool:
        """True if Redis answers; False (never raises) otherwise. Always asks, even right after a fault."""
        try:
            ok = bool(await asyncio.wait_for(self._redis.ping(), self.deadline_s))
        except (RedisError, *_UNREACHABLE):
            self._down_since = time.monotonic()
            return False
        self._down_since = None
        return ok

    async def close(self) -> None:
        await self._redis.aclose()
        await self._bulk.aclose()
