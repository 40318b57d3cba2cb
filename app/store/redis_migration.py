"""The indexes of a Redis store written before they existed: built once, on the first call."""

from __future__ import annotations

import logging

import redis.asyncio as aioredis

from . import redis_scripts as scripts
from .base import UNFINISHED, parse_record
from .redis_keys import MGET_CHUNK, RedisKeys

log = logging.getLogger(__name__)

SCHEMA_VERSION = b"3"


async def build_indexes(redis: aioredis.Redis, keys: RedisKeys) -> None:
    """Build the per-owner, unfinished and name indexes of a store written before they existed (idempotent).

    Oldest first: when tasks of one owner share a name, the oldest keeps it and the others lose it.
    """
    index_one = redis.register_script(scripts.INDEX)
    ids = [i.decode() for i in await redis.zrange(keys.all, 0, -1)]
    for start in range(0, len(ids), MGET_CHUNK):
        chunk = ids[start : start + MGET_CHUNK]
        raws = await redis.mget([keys.task(i) for i in chunk])
        named: list[tuple[str, str]] = []
        async with redis.pipeline(transaction=False) as pipe:
            for task_id, raw in zip(chunk, raws, strict=True):
                rec = None if raw is None else parse_record(raw, task_id)
                if rec is not None:
                    indexes = [keys.task(task_id), keys.owner(rec.owner), keys.unfinished, keys.names(rec.owner)]
                    unnamed = rec.model_copy(update={"name": None}).to_json()
                    args = [raw, task_id, repr(rec.created_at), scripts.flag(rec.status in UNFINISHED)]
                    await index_one(keys=indexes, args=[*args, rec.name or "", unnamed], client=pipe)
                    named.append((task_id, rec.name or ""))
            for (task_id, name), outcome in zip(named, await pipe.execute(), strict=True):
                if outcome == 2:
                    log.warning("task %s loses the name %r, which an older task of its owner keeps", task_id, name)
    await redis.set(keys.schema, SCHEMA_VERSION)
    if ids:
        log.info("redis store %s: indexed %d existing tasks by owner, status and name", keys.prefix, len(ids))
