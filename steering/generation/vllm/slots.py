"""Which vectors vLLM's workers hold: bounded like LoRA adapters, by slots and by KV-prefix columns.

The front end is the only writer. An activation vector takes one of `capacity` slots; a KV prefix takes as
many of `columns` prefix columns as it has tokens (`kv_prefix.py`), and no slot. A request pins the ids it
names for its whole life; a vector not held yet takes free room, or the room of the least recently used
unpinned vectors (which the workers then unload). When the room cannot be found without unloading a pinned
vector, the request waits for one to be released (`VectorSlots.reserve` says so by returning None, having
changed nothing).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

Cost = tuple[int, int]  # (slots, prefix columns)
ONE_SLOT: Cost = (1, 0)


@dataclass(frozen=True)
class Reservation:
    """What the workers must do before the request runs: unload `evict`, then load `load`."""

    load: tuple[str, ...]
    evict: tuple[str, ...]


class VectorSlots:
    def __init__(self, capacity: int, columns: int = 0) -> None:
        if capacity < 1:
            raise ValueError("at least one steering slot is needed")
        self.capacity, self.columns = capacity, columns
        self._held: OrderedDict[str, int] = OrderedDict()  # id -> requests in flight using it; oldest use first
        self._costs: dict[str, Cost] = {}

    def __contains__(self, vector_id: str) -> bool:
        return vector_id in self._held

    def __len__(self) -> int:
        return len(self._held)

    def used(self) -> Cost:
        return sum(c[0] for c in self._costs.values()), sum(c[1] for c in self._costs.values())

    def check(self, vector_ids: Iterable[str], costs: Mapping[str, Cost] | None = None) -> dict[str, Cost]:
        """Each id's cost; `ValueError` if together they need more than the whole room (they could never fit)."""
        cost = {v: (costs or {}).get(v, ONE_SLOT) for v in dict.fromkeys(vector_ids)}
        need = sum(c[0] for c in cost.values()), sum(c[1] for c in cost.values())
        if need[0] > self.capacity or need[1] > self.columns:
            raise ValueError(
                f"a request names {need[0]} vectors and {need[1]} KV-prefix columns; vLLM holds at most "
                f"{self.capacity} and {self.columns} at once"
            )
        return cost

    def reserve(self, vector_ids: Iterable[str], costs: Mapping[str, Cost] | None = None) -> Reservation | None:
        """Pin these ids (loading the missing ones, evicting unpinned ones as needed); None when there is no room
        now (other vectors are pinned) and nothing was changed. `costs` gives a KV prefix's (0, its tokens);
        an id it leaves out takes one slot."""
        wanted = list(dict.fromkeys(vector_ids))
        cost = self.check(wanted, costs)
        missing = [v for v in wanted if v not in self._held]
        used = self.used()
        short = [
            used[d] + sum(cost[v][d] for v in missing) - limit for d, limit in enumerate((self.capacity, self.columns))
        ]
        evict = []
        for vector_id, users in self._held.items():
            if max(short) <= 0:
                break
            held = self._costs[vector_id]
            if users or vector_id in cost or not any(held[d] and short[d] > 0 for d in range(2)):
                continue
            evict.append(vector_id)
            short = [s - h for s, h in zip(short, held, strict=True)]
        if max(short) > 0:
            return None
        for vector_id in evict:
            del self._held[vector_id], self._costs[vector_id]
        for vector_id in wanted:
            self._held[vector_id] = self._held.get(vector_id, 0) + 1
            self._held.move_to_end(vector_id)
            self._costs[vector_id] = cost[vector_id]
        return Reservation(load=tuple(missing), evict=tuple(evict))

    def release(self, vector_ids: Iterable[str]) -> None:
        for vector_id in dict.fromkeys(vector_ids):
            if self._held.get(vector_id, 0) > 0:
                self._held[vector_id] -= 1

    def forget(self, vector_ids: Iterable[str]) -> None:
        """Drop ids whose loading failed (they were reserved, never held by the workers)."""
        for vector_id in vector_ids:
            self._held.pop(vector_id, None)
            self._costs.pop(vector_id, None)

    def pinned(self, vector_id: str) -> int:
        return self._held.get(vector_id, 0)
