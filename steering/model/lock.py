"""The lock on a loaded model, where generation goes first.

Two kinds of work want the model: generation (a request waits on every step) and vector computation
(nobody waits on any one slice of it). Generation takes the lock with `lock.first()`, ahead of every
waiting computation; `lock.demand()` marks a busy period, during which computations also stay out between
generation steps. Computation takes it with `with lock:` (the `threading.RLock` interface it replaces).

A computation also gives the model back in the middle of a pass. Once the lock is `bind`-ed to the
decoder layers of the module tree computations run on, a computation pauses before each layer (and,
when the pass records gradients, between layers of the backward pass) if generation is waiting: it lets
go, waits until generation is done, and goes on where it stopped.
So generation waits at most one layer of a computation, not a whole training step. This is only safe
because generation runs on another module tree over the same weights (`steering.model.twin`): a computation's
hooks stay attached while it is paused, and must not see generation's forward passes.

A computation is not starved for ever: one that has waited `patience_s` gets the model even while
generation is busy, and keeps it for at least `STARVED_SLICE_S` before it pauses again; under unbroken
load it still moves at about one slice per `patience_s`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

DEFAULT_PATIENCE_S = 2.0
STARVED_SLICE_S = 0.25


class ModelLock:
    def __init__(self, patience_s: float = DEFAULT_PATIENCE_S) -> None:
        self.patience_s = patience_s
        self._cond = threading.Condition(threading.Lock())
        self._owner: int | None = None
        self._owner_first = False  # the owner is generation (never paused)
        self._depth = 0
        self._first_waiting = 0  # generation threads waiting for the model
        self._starving = 0  # computations that have waited past their patience
        self._demand = 0  # generation has rows running or queued
        self._unpausable_until = 0.0  # a starved computation's slice runs to here
        self._handles: list = []

    def bind(self, layers: Sequence[nn.Module]) -> None:
        """Pause computations before these decoder layers when generation waits (see the module doc).

        The hooks stay for the model's life and do nothing unless the thread running the layer holds the
        lock as a computation."""
        for handle in self._handles:
            handle.remove()
        self._handles = [layer.register_forward_pre_hook(self._before_layer) for layer in layers]

    # -- computation (low priority); also the plain `threading.Lock` interface --------------------

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return self._acquire(first=False, blocking=blocking, timeout=timeout)

    def release(self) -> None:
        with self._cond:
            if self._owner != threading.get_ident():
                raise RuntimeError("cannot release a model lock held by another thread")
            self._depth -= 1
            if self._depth == 0:
                self._owner, self._owner_first = None, False
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

    # -- pause points -----------------------------------------------------------------------------

    def pause(self) -> None:
        """Called by the computation holding the model: let waiting generation go first, then go on."""
        me = threading.get_ident()
        with self._cond:
            if self._owner != me or self._owner_first or not self.generation_waiting:
                return
            if time.monotonic() < self._unpausable_until:
                return
            depth = self._depth
            self._owner, self._depth = None, 0
            self._cond.notify_all()
        self._acquire(first=False, blocking=True, timeout=-1)
        with self._cond:
            self._depth = depth

    def _before_layer(self, module: nn.Module, args: tuple) -> None:
        if self._owner != threading.get_ident() or self._owner_first:
            return
        self.pause()
        hidden = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if hidden is not None and hidden.requires_grad and torch.is_grad_enabled():
            hidden.register_hook(self._during_backward)

    def _during_backward(self, grad: torch.Tensor) -> None:
        self.pause()

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
                        self._owner, self._owner_first, self._depth = me, first, 1
                        if starving:
                            self._unpausable_until = time.monotonic() + STARVED_SLICE_S
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
