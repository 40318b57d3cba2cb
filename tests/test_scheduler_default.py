"""Continuous batching on the real default model (SmolLM2-135M): rows that join late and leave early give, token
for token, their solo runs, with real task vectors and every injection mode."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from steering.generation.rows import GenerationRequest
from steering.generation.transformers.engine import Engine
from steering.model.loading import LoadedModel
from steering.steer.inject import SteeringTerm
from steering.tasks.templates import DEFAULT_TEMPLATE, render_query
from tests.conftest import DefaultTaskVector
from tests.test_scheduler import run, solo, synthetic_vector

pytestmark = pytest.mark.slow


def test_rows_that_join_and_leave_give_their_solo_tokens(
    default_lm: LoadedModel, default_task_vector: Callable[[str], DefaultTaskVector]
) -> None:
    engine = Engine(default_lm)
    vector, demos, test = default_task_vector("antonyms")
    queries = [engine.encode(render_query(DEFAULT_TEMPLATE, d.input)) for d in test[:6]]
    few_shot = engine.encode(
        "".join(f"Q: {d.input}\nA: {d.output}\n\n" for d in demos[:10]) + render_query(DEFAULT_TEMPLATE, test[6].input)
    )
    small = {m: synthetic_vector(default_lm, m, i) for i, m in enumerate(("add_from_last", "add_all_norm"))}
    requests = [
        GenerationRequest(queries[0], (SteeringTerm(vector, vector.default_strength),), max_new_tokens=24),
        GenerationRequest(few_shot, (), max_new_tokens=6),
        GenerationRequest(queries[1], (SteeringTerm(vector, 0.5),), max_new_tokens=3),
        GenerationRequest(queries[2], (SteeringTerm(small["add_from_last"], 0.05, (10,)),), max_new_tokens=12),
        GenerationRequest(queries[3], (SteeringTerm(small["add_all_norm"], 0.05),), max_new_tokens=8),
        GenerationRequest(queries[4], (), max_new_tokens=16),
        GenerationRequest(queries[5], (SteeringTerm(vector, 1.0), SteeringTerm(vector, -0.3, (20,))), max_new_tokens=5),
    ]
    alone = [solo(engine, r) for r in requests]
    arrivals = list(zip([0, 0, 2, 3, 3, 7, 9], requests, strict=True))
    results, streamed, sizes = run(engine, arrivals, chunk=64, max_rows=4)
    assert [r.token_ids for r in results] == alone
    assert [r.text for r in results] == streamed
    assert max(sizes) >= 3
