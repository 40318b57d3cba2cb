"""The vLLM engine's line for the workers' room (`RoomQueue`): first come, first served, and nothing left pinned
by a request that failed or was cancelled. Runs without vLLM: the queue only decides order and reservations."""

from __future__ import annotations

import asyncio
import random

import pytest

from steering.generation.vllm.room_queue import RoomQueue
from steering.generation.vllm.slots import Reservation, VectorSlots

PREFIXES = {"p1": (0, 60), "p2": (0, 80)}


class Workers:
    """What the workers hold, as the loads and unloads of the reservations leave it."""

    def __init__(self) -> None:
        self.held: set[str] = set()
        self.order: list[str] = []  # requests, in the order their room was given

    def loader(self, name: str, fail: bool = False):
        async def apply(reservation: Reservation) -> None:
            await asyncio.sleep(0)  # a load awaits the workers
            if fail:
                raise RuntimeError("the workers refused the load")
            self.held -= set(reservation.evict)
            self.held |= set(reservation.load)
            self.order.append(name)

        return apply


async def started(queue: RoomQueue, waiting: int) -> None:
    for _ in range(100):
        if queue.waiting == waiting:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{queue.waiting} requests wait, not {waiting}")


async def test_a_request_that_fits_waits_behind_one_that_waits_for_room() -> None:
    queue, workers = RoomQueue(VectorSlots(2, columns=100)), Workers()
    await queue.hold(["v1", "p1"], PREFIXES, workers.loader("first"))
    big = asyncio.create_task(queue.hold(["p2"], PREFIXES, workers.loader("big")))  # p1 is pinned: 140 columns
    await started(queue, 1)
    small = asyncio.create_task(queue.hold(["v1"], PREFIXES, workers.loader("small")))  # v1 is held: it fits now
    await started(queue, 2)
    assert not big.done() and not small.done() and workers.order == ["first"]
    await queue.release(["v1", "p1"])
    await asyncio.wait_for(asyncio.gather(big, small), 5)
    assert workers.order == ["first", "big", "small"]
    assert workers.held == {"v1", "p2"} and queue.slots.pinned("p1") == 0 and "p1" not in queue.slots


async def test_a_request_cancelled_or_failed_while_in_line_lets_the_next_one_through() -> None:
    queue, workers = RoomQueue(VectorSlots(1, columns=100)), Workers()
    await queue.hold(["v1"], {}, workers.loader("first"))
    cancelled = asyncio.create_task(queue.hold(["v2"], {}, workers.loader("cancelled")))
    await started(queue, 1)
    failing = asyncio.create_task(queue.hold(["v3"], {}, workers.loader("failing", fail=True)))
    after = asyncio.create_task(queue.hold(["v4"], {}, workers.loader("after")))
    await started(queue, 3)
    cancelled.cancel()
    await started(queue, 2)
    await queue.release(["v1"])
    with pytest.raises(RuntimeError, match="refused"):
        await asyncio.wait_for(failing, 5)
    await asyncio.wait_for(after, 5)
    assert workers.order == ["first", "after"] and queue.waiting == 0
    assert "v3" not in queue.slots and "v2" not in queue.slots and queue.slots.pinned("v4") == 1


async def test_a_request_without_vectors_never_waits_and_one_too_big_is_refused_at_once() -> None:
    queue, workers = RoomQueue(VectorSlots(1, columns=100)), Workers()
    await queue.hold(["v1"], {}, workers.loader("first"))
    waiting = asyncio.create_task(queue.hold(["v2"], {}, workers.loader("second")))
    await started(queue, 1)
    await asyncio.wait_for(queue.hold([], {}, workers.loader("plain")), 1)
    with pytest.raises(ValueError, match="101 KV-prefix columns"):
        await queue.hold(["p9"], {"p9": (0, 101)}, workers.loader("huge"))
    assert queue.waiting == 1
    await queue.release(["v1"])
    await asyncio.wait_for(waiting, 5)
    assert workers.order == ["first", "second"]


@pytest.mark.parametrize("seed", range(6))
async def test_random_arrivals_are_served_in_order_within_the_room(seed: int) -> None:
    """Requests of 1-3 vectors and prefixes arrive and hold their room for a while: each gets its room in the
    order it came, the workers never hold more than the room, and every request is served."""
    rng = random.Random(seed)
    slots = VectorSlots(3, columns=120)
    queue, workers = RoomQueue(slots), Workers()
    costs = {f"p{i}": (0, 30 + 20 * i) for i in range(4)}
    names = [f"v{i}" for i in range(5)] + list(costs)
    refused: list[str] = []
    waited: list[int] = []  # requests in line as each one came: the line must have been used

    async def request(index: int) -> None:
        ids = rng.sample(names, rng.randint(1, 3))
        try:
            await queue.hold(ids, costs, workers.loader(str(index)))
        except ValueError:  # more columns than the room has: refused at once
            refused.append(str(index))
            return
        used = slots.used()
        assert used[0] <= 3 and used[1] <= 120 and set(ids) <= workers.held
        for _ in range(rng.randint(0, 4)):
            await asyncio.sleep(0)
        await queue.release(ids)

    tasks = []
    for index in range(40):
        tasks.append(asyncio.create_task(request(index)))
        await asyncio.sleep(0)  # it takes its place in line (or the lock's, which is first come, first served too)
        waited.append(queue.waiting)
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert workers.order == [str(i) for i in range(40) if str(i) not in refused]
    assert len(workers.order) > 30 and max(waited) > 3
    assert all(slots.pinned(n) == 0 for n in names)
