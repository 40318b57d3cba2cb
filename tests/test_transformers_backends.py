"""The transformers backends are admission policies of one loop (steering/generation/transformers/batcher.py):
static batches admit nobody while a batch runs, continuous batching admits at every step; under both, a step
that raises is retried row by row on the same scheduler, so only the row that raises alone fails."""

from __future__ import annotations

import asyncio
import time

import pytest

from steering.generation.backend import Submission
from steering.generation.errors import ShuttingDown
from steering.generation.rows import GenerationRequest
from steering.generation.transformers.batcher import Batcher
from steering.generation.transformers.continuous import ContinuousBackend
from steering.generation.transformers.engine import Engine
from steering.generation.transformers.static import StaticBackend
from steering.model.loading import LoadedModel
from tests.test_reliability import PoisonedModel
from tests.test_scheduler import PROMPTS

POLICIES = ["static", "continuous"]


class Recorded:
    def __init__(self) -> None:
        self.values: list[float] = []

    def inc(self, amount: float = 1) -> None:
        self.values.append(amount)

    def set(self, value: float) -> None:
        self.values.append(value)

    def observe(self, amount: float) -> None:
        self.values.append(amount)


class Metrics:
    def __init__(self) -> None:
        self.queue_depth, self.batch_size, self.generated_tokens = Recorded(), Recorded(), Recorded()


def backend(policy: str, engine: Engine, metrics: Metrics) -> Batcher:
    if policy == "static":
        return StaticBackend(engine, 8, 0.05, 16, metrics)
    return ContinuousBackend(engine, 8, 16, metrics)


async def first_piece(submission: Submission) -> None:
    assert submission.deltas is not None
    assert await submission.deltas.get() is not None, "the row ended before it streamed anything"


@pytest.mark.parametrize("policy", POLICIES)
async def test_a_request_joins_a_running_batch_only_when_batching_is_continuous(
    tiny_llama: LoadedModel, policy: str
) -> None:
    engine = Engine(tiny_llama)
    engine.eos_ids = set()  # every row runs to its length
    batch = [GenerationRequest(engine.encode(p), max_new_tokens=24) for p in PROMPTS[:3]]
    late = GenerationRequest(engine.encode(PROMPTS[3]), max_new_tokens=4)
    alone = [engine.generate([r])[0].token_ids for r in [*batch, late]]
    metrics = Metrics()
    server = backend(policy, engine, metrics)
    server.start()
    try:
        submissions = [server.submit(r, stream=i == 0) for i, r in enumerate(batch)]
        await first_piece(submissions[0])
        submissions.append(server.submit(late))
        results = [await server.result(s) for s in submissions]
    finally:
        await server.close()
    assert [r.token_ids for r in results] == alone
    rows_admitted = metrics.batch_size.values  # rows in flight after each admission
    assert rows_admitted == ([3, 1] if policy == "static" else [1, 3, 4])


@pytest.mark.parametrize("policy", POLICIES)
async def test_a_step_that_raises_is_retried_row_by_row(tiny_llama: LoadedModel, policy: str) -> None:
    engine = Engine(tiny_llama)
    poison = engine.encode("Q: poison\nA:")
    good = [GenerationRequest(engine.encode(p), max_new_tokens=8) for p in PROMPTS[:2]]
    alone = [engine.generate([r])[0] for r in good]
    server = backend(policy, engine, Metrics())
    server.start()
    try:
        with PoisonedModel(tiny_llama, poison) as poisoned:
            bad = server.submit(GenerationRequest(poison, max_new_tokens=8))
            streamed = server.submit(good[0], stream=True)
            other = server.submit(good[1])
            with pytest.raises(RuntimeError, match="injected fault"):
                await server.result(bad)
            results = [await server.result(streamed), await server.result(other)]
    finally:
        await server.close()
    assert poisoned.failed_rows == 3  # the three rows shared the step that raised
    assert [r.token_ids for r in results] == [r.token_ids for r in alone]
    pieces: list[str] = []
    assert streamed.deltas is not None
    while (piece := streamed.deltas.get_nowait()) is not None:
        pieces.append(piece)
    assert "".join(pieces) == results[0].text  # what it streamed before the fault was not sent again


@pytest.mark.parametrize("policy", POLICIES)
async def test_closing_fails_the_rows_in_flight_and_those_waiting_for_company(
    tiny_llama: LoadedModel, policy: str
) -> None:
    engine = Engine(tiny_llama)
    engine.eos_ids = set()
    # A slow device: 200 steps of the tiny model take seconds, so the row is still running when the backend
    # closes (unslowed, a quiet machine finishes it in 0.2 s and the test could not tell).
    slow = tiny_llama.model.register_forward_pre_hook(lambda *_: time.sleep(0.02))
    try:
        running = backend(policy, engine, Metrics())
        running.start()
        in_flight = running.submit(GenerationRequest(engine.encode(PROMPTS[0]), max_new_tokens=200), stream=True)
        await first_piece(in_flight)
        gathering = StaticBackend(engine, 8, 60.0, 16, Metrics())  # a window far longer than the test
        gathering.start()
        waiting = [gathering.submit(GenerationRequest(engine.encode(p), max_new_tokens=4)) for p in PROMPTS[:2]]
        await asyncio.sleep(0.2)  # the window has taken them off the queue
        assert not in_flight.future.done()
        await running.close()
        await gathering.close()
    finally:
        slow.remove()
    for submission in [in_flight, *waiting]:
        with pytest.raises(ShuttingDown):
            await asyncio.wait_for(asyncio.shield(submission.future), 5)
