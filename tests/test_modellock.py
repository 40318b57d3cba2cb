"""The model lock (steering/modellock.py): generation goes first; a computation is never starved for ever."""

from __future__ import annotations

import threading
import time

from steering.modellock import ModelLock


def in_thread(fn) -> threading.Thread:
    thread = threading.Thread(target=fn, daemon=True)
    thread.start()
    return thread


def test_reentrant_and_non_blocking_like_an_rlock() -> None:
    lock = ModelLock()
    outcomes: list[object] = []

    def from_another_thread() -> None:
        outcomes.append(lock.acquire(blocking=False))
        try:
            lock.release()
        except RuntimeError as exc:
            outcomes.append(exc)

    with lock, lock:
        assert lock.acquire(blocking=False)
        lock.release()
        in_thread(from_another_thread).join()
    assert outcomes[0] is False and isinstance(outcomes[1], RuntimeError)
    assert lock.acquire(timeout=0.1)
    lock.release()


def test_a_computation_waits_while_generation_has_work() -> None:
    lock = ModelLock(patience_s=10.0)
    order: list[str] = []

    def compute() -> None:
        with lock:
            order.append("computation")

    with lock.demand():
        computing = in_thread(compute)
        time.sleep(0.1)
        for _ in range(3):  # generation steps, with the model free between them
            with lock.first():
                order.append("step")
        time.sleep(0.05)
        assert order == ["step"] * 3  # the computation never slipped in between steps
    computing.join(2)
    assert order[-1] == "computation"


def test_generation_goes_ahead_of_a_waiting_computation() -> None:
    lock = ModelLock(patience_s=10.0)
    order: list[str] = []

    def compute() -> None:
        with lock:
            order.append("computation")

    def generate() -> None:
        with lock.first():
            order.append("generation")

    lock.acquire()  # a computation's slice in progress
    computing = in_thread(compute)
    time.sleep(0.05)
    generating = in_thread(generate)
    time.sleep(0.05)
    lock.release()
    generating.join(2)
    computing.join(2)
    assert order == ["generation", "computation"]


def test_a_computation_past_its_patience_gets_a_slice_under_unbroken_load() -> None:
    lock = ModelLock(patience_s=0.2)
    got_in = threading.Event()
    with lock.demand():
        in_thread(lambda: (lock.acquire(), got_in.set(), lock.release()))
        started = time.monotonic()
        while not got_in.is_set() and time.monotonic() - started < 3:
            with lock.first():
                time.sleep(0.01)
        waited = time.monotonic() - started
    assert got_in.is_set() and 0.15 <= waited < 1.5
