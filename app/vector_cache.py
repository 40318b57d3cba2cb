"""Recently used vectors kept in process memory, bounded in bytes, with the record they belong to.

The record comes along so that a ready task this replica has already served keeps serving while the
store is unreachable (its owner and model are checked against the cached record then).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from app.store import TaskRecord
from steering.vectors.task_vector import TaskVector


@dataclass(frozen=True)
class CachedVector:
    record: TaskRecord
    vector: TaskVector
    nbytes: int


def vector_nbytes(vector: TaskVector) -> int:
    return sum(t.numel() * t.element_size() for t in vector.tensors.values())


class VectorCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._items: OrderedDict[str, CachedVector] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, task_id: str) -> CachedVector | None:
        entry = self._items.get(task_id)
        if entry is not None:
            self._items.move_to_end(task_id)
        return entry

    def named(self, owner: str | None, name: str) -> CachedVector | None:
        """The owner's cached task called `name`, for when the store cannot say (a rename elsewhere may have
        moved the name since: the most recently updated record that has it wins)."""
        matches = [e for e in self._items.values() if e.record.owner == owner and e.record.name == name]
        return max(matches, key=lambda e: e.record.updated_at, default=None)

    def put(self, record: TaskRecord, vector: TaskVector) -> None:
        """Keep `vector` unless it alone is larger than the whole cache; evict the least recently used."""
        self.drop(record.id)
        size = vector_nbytes(vector)
        if size > self.max_bytes:
            return
        self._items[record.id] = CachedVector(record, vector, size)
        self.nbytes += size
        while self.nbytes > self.max_bytes:
            _, evicted = self._items.popitem(last=False)
            self.nbytes -= evicted.nbytes

    def drop(self, task_id: str) -> None:
        entry = self._items.pop(task_id, None)
        if entry is not None:
            self.nbytes -= entry.nbytes
