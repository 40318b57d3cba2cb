"""Continuous batching (steering/generation/transformers/scheduler.py): whatever joins or leaves around a row, the
row's tokens are its
solo run's, on a tiny model of every supported type (sliding windows shorter than the prompts included)."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest
import torch

from steering.generation.rows import GenerationRequest, GenerationResult
from steering.generation.transformers.engine import Engine
from steering.generation.transformers.scheduler import BULK, MAX_BULK_PAUSE, Scheduler
from steering.model.loading import LoadedModel
from steering.steer.inject import SteeringError, SteeringTerm
from steering.vectors.modes import MODE_NAMES, expected_shapes, mode_spec
from steering.vectors.task_vector import TaskVector

PROMPTS = [
    "Q: hot\nA:",
    "France",
    "Q: the quick brown fox jumps\nA:",
    "Q: hot\nA: cold\n\nQ: big\nA: small\n\nQ: up\nA:",  # 30 tokens: chunked, longer than a short window
    "Q: big dog\nA:",
    "red green",
    "Q: one two three four five\nA:",
    "Q: cat, dog, sun\nA:",
]


def synthetic_vector(lm: LoadedModel, mode: str, seed: int) -> TaskVector:
    """A random vector of a mode, at every layer: what matters here is where it lands, not what it means."""
    gen = torch.Generator().manual_seed(seed)
    shapes = expected_shapes(lm.arch)
    tensors = {name: torch.randn(shapes[name], generator=gen) for name in mode_spec(mode).tensors}
    layers = list(range(lm.arch.num_layers))
    return TaskVector("synthetic", mode, tensors, layers, 1.0, lm.fingerprint)  # type: ignore[arg-type]


def mixed_requests(lm: LoadedModel, engine: Engine) -> list[GenerationRequest]:
    vectors = {m: synthetic_vector(lm, m, i) for i, m in enumerate(MODE_NAMES)}
    plans: list[Sequence[SteeringTerm]] = [
        (SteeringTerm(vectors["replace_last"], 0.8),),
        (),
        (SteeringTerm(vectors["add_from_last"], 0.7), SteeringTerm(vectors["add_last"], -0.5)),
        (SteeringTerm(vectors["head_mix_last"], 1.0),),
        (SteeringTerm(vectors["add_all_norm"], 2.0),),
        (SteeringTerm(vectors["add_all"], 0.5, (0,)),),
        (SteeringTerm(vectors["add_from_last"], 0.0),),
        (SteeringTerm(vectors["head_mix_answer"], 0.9),),
    ]
    lengths = [5, 9, 1, 12, 3, 7, 10, 6]
    requests = [
        GenerationRequest(engine.encode(p), plan, max_new_tokens=n)
        for p, plan, n in zip(PROMPTS, plans, lengths, strict=True)
    ]
    requests.append(GenerationRequest(engine.encode(PROMPTS[0]), plans[2], 8, temperature=0.9, top_p=0.9, seed=11))
    return requests


def run(
    engine: Engine,
    arrivals: Sequence[tuple[int, GenerationRequest]],
    *,
    chunk: int,
    max_rows: int = 4,
    priority: int = 6,
) -> tuple[list[GenerationResult], list[str], list[int]]:
    """Requests added at their step (at most `max_rows` in flight); results, streamed text and rows running.

    Rows asking for at most `priority` tokens run in the priority lane, the others in the bulk lane."""
    scheduler = Scheduler(engine, prefill_chunk_tokens=chunk, priority_new_tokens=priority)
    results: dict[int, GenerationResult] = {}
    streamed = [""] * len(arrivals)
    waiting = sorted(range(len(arrivals)), key=lambda i: arrivals[i][0])
    step, sizes = 0, []
    while waiting or len(scheduler):
        while waiting and arrivals[waiting[0]][0] <= step and len(scheduler) < max_rows:
            key = waiting.pop(0)
            scheduler.add(key, arrivals[key][1])
        with engine.lm.lock.first():
            updates = scheduler.step()
        sizes.append(scheduler.running)
        for update in updates:
            streamed[update.key] += update.text
            if update.result is not None:
                results[update.key] = update.result
        step += 1
    return [results[i] for i in range(len(arrivals))], streamed, sizes


def solo(engine: Engine, request: GenerationRequest) -> list[int]:
    return engine.generate([request])[0].token_ids


def test_rows_that_join_and_leave_give_their_solo_tokens(tiny_lm: LoadedModel) -> None:
    engine = Engine(tiny_lm)
    requests = mixed_requests(tiny_lm, engine)
    alone = [solo(engine, r) for r in requests]
    arrivals = list(zip([0, 0, 1, 2, 2, 4, 5, 6, 7], requests, strict=True))
    results, streamed, sizes = run(engine, arrivals, chunk=16)
    assert [r.token_ids for r in results] == alone
    assert [r.text for r in results] == streamed
    assert max(sizes) > 1  # rows did share steps


def test_steering_acts_in_the_scheduler(tiny_llama: LoadedModel) -> None:
    """The invariant above has teeth: the synthetic vectors change every row they steer."""
    engine = Engine(tiny_llama)
    requests = mixed_requests(tiny_llama, engine)
    for request in requests:
        if request.steering and any(t.strength for t in request.steering) and request.temperature == 0:
            plain = GenerationRequest(request.prompt_ids, (), max_new_tokens=request.max_new_tokens)
            assert solo(engine, request) != solo(engine, plain) or request.max_new_tokens == 1


@pytest.mark.parametrize(("chunk", "priority"), [(1, 6), (7, 0), (64, 100), (1024, 6)])
def test_prefill_chunks_groups_and_lanes_change_nothing(tiny_llama: LoadedModel, chunk: int, priority: int) -> None:
    engine = Engine(tiny_llama)
    requests = mixed_requests(tiny_llama, engine)
    arrivals = [(0, r) for r in requests]
    results, _, _ = run(engine, arrivals, chunk=chunk, max_rows=8, priority=priority)
    assert [r.token_ids for r in results] == [solo(engine, r) for r in requests]


def test_a_cancelled_row_leaves_at_once_and_spares_the_others(tiny_llama: LoadedModel) -> None:
    engine = Engine(tiny_llama)
    requests = [GenerationRequest(engine.encode(p), max_new_tokens=12) for p in PROMPTS[:3]]
    alone = [solo(engine, r) for r in requests]
    requests[1].cancel = threading.Event()
    scheduler = Scheduler(engine)
    for key, request in enumerate(requests):
        scheduler.add(key, request)
    results: dict[int, GenerationResult] = {}
    streamed = ["", "", ""]
    steps, seen = 0, ""
    while len(scheduler):
        if steps == 3:
            requests[1].cancel.set()
            seen = streamed[1]
        with tiny_llama.lock.first():
            for update in scheduler.step():
                streamed[update.key] += update.text
                if update.result is not None:
                    results[update.key] = update.result
        steps += 1
    # Ended before the next step: no token after the cancel, and what it had held back was sent.
    assert results[1].finish_reason == "cancelled" and len(results[1].token_ids) == 4
    assert streamed[1] == results[1].text and streamed[1].startswith(seen)
    assert results[0].token_ids == alone[0] and results[2].token_ids == alone[2]


def test_a_row_with_non_finite_logits_fails_alone(tiny_llama: LoadedModel) -> None:
    engine = Engine(tiny_llama)
    arch = tiny_llama.arch
    huge = TaskVector(
        "synthetic", "add_all", {"residual": torch.full((arch.num_layers, arch.hidden_size), 3e38)}, [0, 1], 1.0, ""
    )
    good = [GenerationRequest(engine.encode(p), max_new_tokens=6) for p in PROMPTS[:2]]
    bad = GenerationRequest(engine.encode(PROMPTS[2]), (SteeringTerm(huge, 50.0),), max_new_tokens=6)
    results, _, _ = run(engine, [(0, good[0]), (1, bad), (1, good[1])], chunk=64)
    assert results[1].finish_reason == "error" and results[1].error
    assert [results[0].token_ids, results[2].token_ids] == [solo(engine, r) for r in good]


def test_a_plan_the_model_cannot_take_is_refused_when_added(tiny_llama: LoadedModel) -> None:
    engine = Engine(tiny_llama)
    vector = synthetic_vector(tiny_llama, "add_last", 0)
    scheduler = Scheduler(engine)
    with pytest.raises(SteeringError):
        scheduler.add(0, GenerationRequest(engine.encode("hi"), (SteeringTerm(vector, 1.0, (9,)),)))
    assert len(scheduler) == 0


def test_no_hooks_stay_between_steps(tiny_llama: LoadedModel) -> None:
    engine = Engine(tiny_llama)
    scheduler = Scheduler(engine)
    for key, request in enumerate(mixed_requests(tiny_llama, engine)):
        scheduler.add(key, request)
    while len(scheduler):
        with tiny_llama.lock.first():
            scheduler.step()
        assert all(not m._forward_hooks and not m._forward_pre_hooks for m in tiny_llama.model.modules())


def test_short_requests_go_first_and_long_ones_still_move(tiny_llama: LoadedModel) -> None:
    """While short rows run in the priority lane, the bulk lane waits, but at most MAX_BULK_PAUSE steps in a row."""
    engine = Engine(tiny_llama)
    engine.eos_ids = set()  # every row runs to its length
    scheduler = Scheduler(engine, priority_new_tokens=4)
    long = GenerationRequest(engine.encode(PROMPTS[0]), max_new_tokens=30)
    scheduler.add("long", long)
    finished_at: dict[object, int] = {}

    def step(n: int) -> None:
        with tiny_llama.lock.first():
            finished_at.update({u.key: n for u in scheduler.step() if u.result is not None})

    step(0)
    steps = 3 * (MAX_BULK_PAUSE + 1)
    for n in range(1, steps + 1):  # a short request joins at every step
        scheduler.add(n, GenerationRequest(engine.encode(PROMPTS[1]), max_new_tokens=4))
        step(n)
    long_row = scheduler._lanes[BULK].rows[0].state  # type: ignore[union-attr]
    assert 1 + 3 <= len(long_row.ids) <= 1 + 4  # its first token, then one step per MAX_BULK_PAUSE + 1
    # Its first token at prefill, the second in the same step, then two more steps; a bulk step may delay it by one.
    assert {finished_at[n] - n for n in range(1, steps - 3)} == {2, 3}
    n = steps
    while len(scheduler):
        n += 1
        step(n)
    assert "long" in finished_at
