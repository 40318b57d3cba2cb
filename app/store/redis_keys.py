"""Where RedisStore keeps what, all under one prefix.

  {prefix}task:{id}       JSON string of the TaskRecord
  {prefix}vec:{id}        raw vector bytes (safetensors, produced elsewhere)
  {prefix}lock:{id}       holder string, SET NX PX; refresh/release by Lua comparing the holder
  {prefix}tasks           sorted set id -> created_at: everyone's tasks, for listing
  {prefix}owner:{owner}   sorted set id -> created_at per owner ("-" for None): list pages and counts
  {prefix}unfinished      set of the ids whose status is pending or running, for reconcilers
  {prefix}names:{owner}   hash name -> id per owner ("-" for None): names are unique per owner
  {prefix}schema          "3" once the per-owner, unfinished and name indexes exist (older stores lack some)

Under Redis Cluster all keys must share a slot: use a hash-tagged prefix such as "{steer}:" there.
"""

from __future__ import annotations

from dataclasses import dataclass

MGET_CHUNK = 500  # records read per MGET


@dataclass(frozen=True)
class RedisKeys:
    prefix: str

    def task(self, task_id: str) -> str:
        return f"{self.prefix}task:{task_id}"

    def vec(self, task_id: str) -> str:
        return f"{self.prefix}vec:{task_id}"

    def lock(self, task_id: str) -> str:
        return f"{self.prefix}lock:{task_id}"

    def owner(self, owner: str | None) -> str:
        return f"{self.prefix}owner:{'-' if owner is None else owner}"

    def names(self, owner: str | None) -> str:
        return f"{self.prefix}names:{'-' if owner is None else owner}"

    @property
    def all(self) -> str:
        return f"{self.prefix}tasks"

    @property
    def unfinished(self) -> str:
        return f"{self.prefix}unfinished"

    @property
    def schema(self) -> str:
        return f"{self.prefix}schema"
