"""Recently used vectors kept in process memory, so a generate call does not fetch them each time."""

from __future__ import annotations

from collections import OrderedDict

from steering.vectors import TaskVector


class VectorCache:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, TaskVector] = OrderedDict()

    def get(self, task_id: str) -> TaskVector | None:
        vector = self._items.get(task_id)
        if vector is not None:
            self._items.move_to_end(task_id)
        return vector

    def put(self, task_id: str, vector: TaskVector) -> None:
        self._items[task_id] = vector
        self._items.move_to_end(task_id)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def drop(self, task_id: str) -> None:
        self._items.pop(task_id, None)
