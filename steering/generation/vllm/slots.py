"""Which vectors vLLM's workers hold: a bounded number of slots, like LoRA adapters.

The front end is the only writer. A request pins the ids it names for its whole life; a vector not held yet
takes a free slot, or the least recently used unpinned one (which the workers then unload). When every slot
is pinned the request waits for one to be released (`VectorSlots.reserve` says so by returning None).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Reservation:
    """What the workers must do before the request runs: unload `evict`, then load `load`."""

    load: tuple[str, ...]
    evict: tuple[str, ...]


class VectorSlots:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("at least one steering slot is needed")
        self.capacity = capacity
        self._held: OrderedDict[str, int] = OrderedDict()  # id -> requests in flight using it; oldest use first

    def __contains__(self, vector_id: str) -> bool:
        return vector_id in self._held

    def __len__(self) -> int:
        return len(self._held)

    def reserve(self, vector_ids: Iterable[str]) -> Reservation | None:
        """Pin these ids (loading the missing ones, evicting unpinned ones as needed); None when there is no room
        now (every other slot is pinned) and nothing was changed."""
        wanted = list(dict.fromkeys(vector_ids))
        if len(wanted) > self.capacity:
            raise ValueError(f"a request names {len(wanted)} vectors; vLLM holds at most {self.capacity} at once")
        missing = [v for v in wanted if v not in self._held]
        free = self.capacity - len(self._held)
        evictable = [v for v, users in self._held.items() if users == 0 and v not in wanted]
        if len(missing) > free + len(evictable):
            return None
        evict = evictable[: max(0, len(missing) - free)]
        for vector_id in evict:
            del self._held[vector_id]
        for vector_id in wanted:
            self._held[vector_id] = self._held.get(vector_id, 0) + 1
            self._held.move_to_end(vector_id)
        return Reservation(load=tuple(missing), evict=tuple(evict))

    def release(self, vector_ids: Iterable[str]) -> None:
        for vector_id in dict.fromkeys(vector_ids):
            if self._held.get(vector_id, 0) > 0:
                self._held[vector_id] -= 1

    def forget(self, vector_ids: Iterable[str]) -> None:
        """Drop ids whose loading failed (they were reserved, never held by the workers)."""
        for vector_id in vector_ids:
            self._held.pop(vector_id, None)

    def pinned(self, vector_id: str) -> int:
        return self._held.get(vector_id, 0)
