"""The bound on vector imports read at once, kept on the app so it outlives a lifespan restart."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from fastapi import FastAPI

from app.error_codes import ApiErrors

T = TypeVar("T")


class ImportSlots:
    """At most `limit` imports read at once. A slot is held until its reading thread ends, even when the
    request has already answered (timeout, disconnect), so slow files cannot pile up threads."""

    def __init__(self, limit: int) -> None:
        self.limit, self.busy = limit, 0

    def acquire(self) -> None:
        if self.busy >= self.limit:
            raise ApiErrors.TOO_MANY_IMPORTS(limit=self.limit)
        self.busy += 1

    def release(self) -> None:
        self.busy -= 1

    async def run(self, fn: Callable[[], T], timeout_s: float) -> T:
        """`fn()` in a worker thread, in the slot this caller acquired (released when the thread ends)."""
        future = asyncio.get_running_loop().run_in_executor(None, fn)
        future.add_done_callback(self._finished)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            raise ApiErrors.IMPORT_TIMEOUT(timeout_s=timeout_s) from None

    def _finished(self, future: asyncio.Future) -> None:
        self.release()
        if not future.cancelled():
            future.exception()  # retrieved, so an abandoned failure is not logged as never retrieved


def import_slots(app: FastAPI, limit: int) -> ImportSlots:
    slots = getattr(app.state, "import_slots", None)
    if slots is None:
        slots = app.state.import_slots = ImportSlots(limit)
    return slots
