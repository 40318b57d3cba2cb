"""Graceful shutdown on SIGTERM: stop taking work at once, let running generations finish, hand back the rest.

uvicorn already stops accepting connections and waits up to `timeout_graceful_shutdown` for open
requests; this server also tells the app the moment the signal arrives, so that queued generations
answer 503 right away (the client retries on another replica), `/readyz` turns 503 for the load
balancer, and running vector computations go back to pending for another replica to adopt.
"""

from __future__ import annotations

import asyncio
import logging
from types import FrameType

import uvicorn
from fastapi import FastAPI

log = logging.getLogger(__name__)


async def begin_shutdown(app: FastAPI) -> None:
    services = getattr(app.state, "services", None)
    if services is None or services.draining:
        return
    services.draining = True
    log.info("shutting down: queued generations get 503, running ones may finish, computations are handed back")
    services.backend.stop_accepting()
    await services.worker.close()


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining: asyncio.Task | None = None

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler runs between bytecodes of whatever the loop was doing: hand over to the loop.
        if self._loop is not None and self._draining is None:
            self._loop.call_soon_threadsafe(self._start_draining)
        super().handle_exit(sig, frame)

    def _start_draining(self) -> None:
        self._draining = asyncio.ensure_future(begin_shutdown(self.app))
