"""The model lock (steering/model/lock.py): generation goes first; a computation is never starved for ever."""

from __future__ import annotations

import threading
import time

import torch

from steering.model.loading import load_model
from steering.model.lock import ModelLock
from steering.model.twin import twin


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
    deadline = time.monotonic() + 10
    while not lock.generation_waiting and time.monotonic() < deadline:  # not a fixed sleep: CI may be slow
        time.sleep(0.01)
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


def test_a_computation_pauses_mid_pass_and_generation_runs_on_the_twin() -> None:
    """Generation waits one layer of a computation, not its pass; both get what they get alone."""
    lm = load_model("tiny:llama")
    lm.lock.bind(lm.arch.layers)
    serving = twin(lm)
    assert all(a is b for a, b in zip(lm.model.parameters(), serving.model.parameters(), strict=True))
    ids = torch.tensor([[5, 9, 5, 9, 7]])
    with torch.inference_mode():
        alone = lm.model(input_ids=ids).logits
    reached, go = threading.Event(), threading.Event()
    out: dict[str, torch.Tensor] = {}

    def hold_at_first_layer(module, args) -> None:
        reached.set()
        go.wait(5)

    def compute() -> None:
        with lm.lock, torch.inference_mode():
            out["computation"] = lm.model(input_ids=ids).logits

    handle = lm.arch.layers[0].register_forward_pre_hook(hold_at_first_layer)
    steering_seen = []
    serving.arch.layers[0].register_forward_hook(lambda *a: steering_seen.append(1))
    try:
        computing = in_thread(compute)
        assert reached.wait(5)  # the computation holds the model, at its first layer
        with lm.lock.demand():
            go.set()  # the computation goes on into layer 0 and pauses before layer 1
            with lm.lock.first(), torch.inference_mode():
                out["generation"] = serving.model(input_ids=ids).logits
            assert "computation" not in out  # still paused: generation is in its busy period
        computing.join(5)
    finally:
        handle.remove()
    assert torch.equal(out["generation"], alone) and torch.equal(out["computation"], alone)
    assert len(steering_seen) == 1  # the twin's hook saw generation only, not the computation


def test_a_computation_pauses_in_its_backward_pass_too() -> None:
    lm = load_model("tiny:llama")
    lm.lock.bind(lm.arch.layers)
    serving = twin(lm)
    ids = torch.tensor([[5, 9, 5, 9, 7]])
    embeds = lm.model.get_input_embeddings()(ids).detach().requires_grad_()
    reached, go = threading.Event(), threading.Event()
    order: list[str] = []

    def hold(grad: torch.Tensor) -> None:
        reached.set()
        go.wait(5)

    def compute() -> None:
        with lm.lock:
            logits = lm.model(inputs_embeds=embeds).logits
            logits.register_hook(hold)  # the first thing the backward pass does
            logits.sum().backward()
            order.append("backward done")

    computing = in_thread(compute)
    assert reached.wait(5)
    with lm.lock.demand():
        go.set()  # the backward goes on and pauses at the next layer
        with lm.lock.first(), torch.inference_mode():
            serving.model(input_ids=ids)
            order.append("generation")
    computing.join(5)
    assert order == ["generation", "backward done"] and embeds.grad is not None
