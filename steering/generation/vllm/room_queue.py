"""Who gets the workers' room next: requests that name vectors wait for it first come, first served.

`VectorSlots` says whether a request's vectors fit now; this decides in which order waiting requests ask. Without
an order, a request whose vectors need room that pinned vectors hold (a long KV prefix, say) could wait forever
while later requests, whose vectors fit at once, kept pinning room as soon as it was freed. Here a request asks
only when every request that came before it has its room, so no later one can take what it waits for: the
pinned room only shrinks while it waits (requests in flight finish), and it is served. A request that names no
vector needs no room and never waits.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Mapping

from steering.generation.vllm.slots import Cost, Reservation, VectorSlots

Apply = Callable[[Reservation], Awaitable[None]]  # makes the workers hold what a reservation says


class RoomQueue:
    def __init__(self, slots: VectorSlots) -> None:
        self.slots = slots
        self._change = asyncio.Condition()
        self._line: deque[object] = deque()  # one ticket per waiting request, oldest first

    @property
    def waiting(self) -> int:
        return len(self._line)

    async def hold(self, vector_ids: Collection[str], costs: Mapping[str, Cost], apply: Apply) -> None:
        """Pin `vector_ids` once every earlier request has its room and these fit; `apply` then loads what is
        missing (while no other request changes the room). If `apply` fails, nothing stays pinned or reserved."""
        if not vector_ids:
            return
        self.slots.check(vector_ids, costs)  # one that can never fit is refused at once, not in its turn
        async with self._change:
            ticket = object()
            self._line.append(ticket)
            reservation = None
            try:
                while reservation is None:
                    if self._line[0] is ticket:
                        reservation = self.slots.reserve(vector_ids, costs)
                    if reservation is None:
                        await self._change.wait()
            finally:  # served or cancelled: the next in line may ask
                self._line.remove(ticket)
                self._change.notify_all()
            try:
                await apply(reservation)
            except BaseException:
                self.slots.release(vector_ids)
                self.slots.forget(reservation.load)
                self._change.notify_all()
                raise

    async def release(self, vector_ids: Collection[str]) -> None:
        if not vector_ids:
            return
        async with self._change:
            self.slots.release(vector_ids)
            self._change.notify_all()
