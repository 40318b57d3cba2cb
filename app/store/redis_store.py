"""TaskStore on Redis (redis.asyncio): what replicas share. Records are JSON, vectors raw bytes.

Keys, all under `prefix`:
  {prefix}task:{id}   JSON string of the TaskRecord
  {prefix}vec:{id}    raw vector bytes (safetensors, produced elsewhere)
  {prefix}lock:{id}   holder string, SET NX PX; refresh/release by Lua comparing the holder
  {prefix}tasks       sorted set id -> created_at, for listing

Multi-key operations (create, delete, put_vector) are Lua scripts, so under Redis Cluster all
keys must share a slot: use a hash-tagged prefix such as "{steer}:" there.
Nothing read from Redis is ever unpickled.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.exceptions import WatchError

from .base import StoreUnavailable, TaskRecord, apply_update

_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError)

# KEYS: task, index   ARGV: json, created_at, id
_CREATE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
  return 1
end
return 0
"""
# KEYS: task, vec, lock, index   ARGV: id
_DELETE = """
local n = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('ZREM', KEYS[4], ARGV[1])
return n
"""
# KEYS: task, vec   ARGV: bytes  -- only while the task exists, so a late worker leaves no orphan
_PUT_VECTOR = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('SET', KEYS[2], ARGV[1])
  return 1
end
return 0
"""
# KEYS: lock   ARGV: holder, ttl_ms
_REFRESH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# KEYS: lock   ARGV: holder
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

_MGET_CHUNK = 500
_UPDATE_RETRIES = 200


def _ttl_ms(ttl_s: float) -> int:
    return max(1, round(ttl_s * 1000))


class RedisStore:
    """TaskStore backed by one Redis (or a Cluster with a hash-tagged prefix)."""

    def __init__(
        self,
        url: str,
        prefix: str = "steer:",
        *,
        connect_timeout_s: float = 2.0,
        socket_timeout_s: float = 10.0,
        retries: int = 2,
    ) -> None:
        self.prefix = prefix
        # Few, short retries: a Redis outage should turn into a 503 in about a second, not 10 s.
        self._redis: aioredis.Redis = aioredis.Redis.from_url(
            url,
            decode_responses=False,
            socket_connect_timeout=connect_timeout_s,
            socket_timeout=socket_timeout_s,
            retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries),
            health_check_interval=30,
        )
        self._create = self._redis.register_script(_CREATE)
        self._delete = self._redis.register_script(_DELETE)
        self._put_vector = self._redis.register_script(_PUT_VECTOR)
        self._refresh = self._redis.register_script(_REFRESH)
        self._release = self._redis.register_script(_RELEASE)

    # keys
    def _task(self, task_id: str) -> str:
        return f"{self.prefix}task:{task_id}"

    def _vec(self, task_id: str) -> str:
        return f"{self.prefix}vec:{task_id}"

    def _lock(self, task_id: str) -> str:
        return f"{self.prefix}lock:{task_id}"

    @property
    def _index(self) -> str:
        return f"{self.prefix}tasks"

    @asynccontextmanager
    async def _guard(self) -> AsyncIterator[None]:
        try:
            yield
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"redis unavailable: {exc}") from exc

    # records
    async def get(self, task_id: str) -> TaskRecord | None:
        async with self._guard():
            raw = await self._redis.get(self._task(task_id))
        return None if raw is None else TaskRecord.from_json(raw)

    async def create(self, record: TaskRecord) -> bool:
        keys = [self._task(record.id), self._index]
        async with self._guard():
            n = await self._create(keys=keys, args=[record.to_json(), repr(record.created_at), record.id])
        return bool(n)

    async def update(self, task_id: str, **fields: Any) -> TaskRecord | None:
        key = self._task(task_id)
        async with self._guard(), self._redis.pipeline(transaction=True) as pipe:
            for attempt in range(_UPDATE_RETRIES):
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    if raw is None:
                        await pipe.unwatch()
                        return None
                    new = apply_update(TaskRecord.from_json(raw), fields)
                    pipe.multi()
                    pipe.set(key, new.to_json())
                    if "created_at" in fields:
                        pipe.zadd(self._index, {task_id: new.created_at})
                    await pipe.execute()
                    return new
                except WatchError:
                    await pipe.reset()
                    await asyncio.sleep(min(0.001 * attempt, 0.05))
        raise StoreUnavailable(f"update of task {task_id} kept conflicting; gave up")

    async def list(self, owner: str | None = None, all_owners: bool = False) -> builtins.list[TaskRecord]:
        out: builtins.list[TaskRecord] = []
        async with self._guard():
            ids = await self._redis.zrevrange(self._index, 0, -1)
            # zrevrange orders equal scores by member descending: the same tie-break as SqliteStore.
            for start in range(0, len(ids), _MGET_CHUNK):
                chunk = ids[start : start + _MGET_CHUNK]
                raws = await self._redis.mget([self._task(i.decode()) for i in chunk])
                for raw in raws:
                    if raw is None:  # deleted between ZREVRANGE and MGET
                        continue
                    rec = TaskRecord.from_json(raw)
                    if all_owners or rec.owner == owner:
                        out.append(rec)
        return out

    async def delete(self, task_id: str) -> bool:
        keys = [self._task(task_id), self._vec(task_id), self._lock(task_id), self._index]
        async with self._guard():
            n = await self._delete(keys=keys, args=[task_id])
        return bool(n)

    # vectors
    async def put_vector(self, task_id: str, data: bytes) -> None:
        """Store the vector bytes; a no-op when the task record does not exist (deleted meanwhile)."""
        async with self._guard():
            await self._put_vector(keys=[self._task(task_id), self._vec(task_id)], args=[bytes(data)])

    async def get_vector(self, task_id: str) -> bytes | None:
        async with self._guard():
            raw = await self._redis.get(self._vec(task_id))
        return None if raw is None else bytes(raw)

    # locks
    async def acquire_lock(self, task_id: str, holder: str, ttl_s: float) -> bool:
        async with self._guard():
            ok = await self._redis.set(self._lock(task_id), holder, nx=True, px=_ttl_ms(ttl_s))
        return bool(ok)

    async def refresh_lock(self, task_id: str, holder: str, ttl_s: float) -> bool:
        async with self._guard():
            n = await self._refresh(keys=[self._lock(task_id)], args=[holder, _ttl_ms(ttl_s)])
        return bool(n)

    async def release_lock(self, task_id: str, holder: str) -> None:
        async with self._guard():
            await self._release(keys=[self._lock(task_id)], args=[holder])

    # lifecycle
    async def ping(self) -> bool:
        """True if Redis answers; False when it cannot be reached (never raises for that)."""
        try:
            return bool(await self._redis.ping())
        except _UNAVAILABLE:
            return False

    async def close(self) -> None:
        await self._redis.aclose()
