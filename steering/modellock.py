"""The lock on a loaded model, where generation goes first.

Steering hooks are module-global, so one forward pass at a time runs on a model. Two kinds of work want
it: generation (a request is waiting for every step) and vector computation (nobody waits for a single
slice of it). `with lock:` is the computation's way in: a short slice (one forward pass, one training
step) that waits while generation holds the model, waits for it, or has said that it has work
(`demand`). Generation takes the model with `lock.first()`, ahead of every computation waiting.

A computation is not starved for ever: one that has waited `patience_s` gets the next slice even
while generation is busy, so under unbroken load it still moves at about one slice per `patience_s`.
The lock is re-entrant, like the `threading.RLock` it replaces.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

DEFAULT_PATIENCE_S = 2.0


class ModelLock:
    def __init__(self, patience_s: float = DEFAULT_PATIENCE_S) -> None:
        self.patience_s = patience_s
        self._cond = threading.Condition(threading.Lock())
        self._owner: int | None = None
        self._depth = 0
        self._first_waiting = 0  # generation threads waiting for the model
        self._starving = 0  # computations that have waited past their patience
        self._demand = 0  # generation has rows running or queued

    # -- computation (low priority); also the plain `threading.Lock` interface --------------------

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return self._acquire(first=False, blocking=blocking, timeout=timeout)

    def release(self) -> None:
        with self._cond:
            if self._owner != threading.get_ident():
                raise RuntimeError("cannot release a model lock held by another thread")
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._cond.notify_all()

    def __enter__(self) -> ModelLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- generation (high priority) ---------------------------------------------------------------

    @contextmanager
    def first(self) -> Iterator[None]:
        """Hold the model ahead of every waiting computation (except one past its patience)."""
        self._acquire(first=True, blocking=True, timeout=-1)
        try:
            yield
        finally:
            self.release()

    @contextmanager
    def demand(self) -> Iterator[None]:
        """While this block runs, generation has work: computations wait between its steps too."""
        with self._cond:
            self._demand += 1
        try:
            yield
        finally:
            with self._cond:
                self._demand -= 1
                self._cond.notify_all()

    @property
    def generation_waiting(self) -> bool:
        return self._first_waiting > 0 or self._demand > 0

    # ---------------------------------------------------------------------------------------------

    def _acquire(self, *, first: bool, blocking: bool, timeout: float) -> bool:
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                self._depth += 1
                return True
            now = time.monotonic()
            deadline = None if timeout is None or timeout < 0 else now + timeout
            patience_end = now + self.patience_s
            starving = False
            if first:
                self._first_waiting += 1
            try:
                while True:
                    if not first and not starving and time.monotonic() >= patience_end:
                        starving = True
                        self._starving += 1
                    if self._owner is None and self._may_enter(first, starving):
                        self._owner, self._depth = me, 1
                        return True
                    now = time.monotonic()
                    if not blocking or (deadline is not None and now >= deadline):
                        return False
                    wait = None if deadline is None else deadline - now
                    if not first and not starving:  # wake up when patience runs out, notified or not
                        wait = patience_end - now if wait is None else min(wait, patience_end - now)
                    self._cond.wait(max(wait, 0.0) if wait is not None else None)
            finally:
                if first:
                    self._first_waiting -= 1
                if starving:
                    self._starving -= 1
                self._cond.notify_all()

    def _may_enter(self, first: bool, starving: bool) -> bool:
        if first:
            return self._starving == 0
        if starving:
            return True
        return self._first_waiting == 0 and self._demand == 0
