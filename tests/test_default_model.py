"""The invariants and the headline claim on the real default model (SmolLM2-135M-Instruct, packaged on PyPI)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import torch

from steering.eval.evaluator import TaskEvaluator
from steering.generation.rows import GenerationRequest
from steering.generation.transformers.engine import Engine
from steering.model.loading import LoadedModel, default_model_folder, load_model
from steering.steer.inject import SteeringTerm
from steering.tasks.templates import DEFAULT_TEMPLATE, render_query
from steering.vectors.task_vector import TaskVector
from tests.conftest import DefaultTaskVector
from tests.uncached_generation import generate_without_cache

pytestmark = pytest.mark.slow

# Tasks where the prototype found task vectors strong on this model; 40 demonstrations, 20 held out.
TASKS = ("antonyms", "present_past")


@pytest.fixture(scope="module")
def task_vectors(default_task_vector: Callable[[str], DefaultTaskVector]) -> dict[str, tuple[TaskVector, list]]:
    return {task: (default_task_vector(task).vector, default_task_vector(task).test) for task in TASKS}


def _queries(engine: Engine, test, n: int = 4) -> list[list[int]]:
    return [engine.encode(render_query(DEFAULT_TEMPLATE, d.input)) for d in test[:n]]


def test_the_converted_default_model_reloads_in_seconds() -> None:
    folder = default_model_folder()
    assert (folder / "model.safetensors").exists()
    started = time.perf_counter()
    lm = load_model()
    assert time.perf_counter() - started < 30
    assert lm.arch.num_layers == 30 and lm.arch.num_heads == 9


def test_no_steering_and_strength_zero_give_the_plain_model(default_lm: LoadedModel, task_vectors) -> None:
    engine = Engine(default_lm)
    vector, test = task_vectors["antonyms"]
    prompts = _queries(engine, test)
    plain = [r.token_ids for r in engine.generate([GenerationRequest(p, max_new_tokens=6) for p in prompts])]
    zero = engine.generate([GenerationRequest(p, (SteeringTerm(vector, 0.0),), max_new_tokens=6) for p in prompts])
    assert [r.token_ids for r in zero] == plain
    for ids, tokens in zip(prompts, plain, strict=True):
        reference = default_lm.model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False, min_new_tokens=6)[
            0, len(ids) :
        ].tolist()
        assert tokens == reference[: len(tokens)]


def test_batched_rows_match_single_runs(default_lm: LoadedModel, task_vectors) -> None:
    engine = Engine(default_lm)
    antonyms, test = task_vectors["antonyms"]
    past, _ = task_vectors["present_past"]
    plans = [(SteeringTerm(antonyms, 1.0),), (SteeringTerm(past, 0.6),), (), (SteeringTerm(antonyms, 0.5),)]
    requests = [
        GenerationRequest(p, plan, max_new_tokens=5) for p, plan in zip(_queries(engine, test), plans, strict=True)
    ]
    batched = [r.token_ids for r in engine.generate(requests)]
    assert batched == [engine.generate([r])[0].token_ids for r in requests]


def test_kv_cache_on_and_off_agree(default_lm: LoadedModel, task_vectors) -> None:
    engine = Engine(default_lm)
    vector, test = task_vectors["present_past"]
    requests = [GenerationRequest(p, (SteeringTerm(vector, 1.0),), max_new_tokens=5) for p in _queries(engine, test)]
    cached = [r.token_ids for r in engine.generate(requests)]
    assert cached == [r.token_ids for r in generate_without_cache(engine, requests)]


@pytest.mark.parametrize("task", TASKS)
def test_steering_beats_zero_shot_by_thirty_points(default_lm: LoadedModel, task_vectors, task: str) -> None:
    vector, test = task_vectors[task]
    evaluator = TaskEvaluator(default_lm, DEFAULT_TEMPLATE, test)
    zero_shot = evaluator.first_token(evaluator.queries)
    steered = evaluator.first_token(evaluator.queries, [SteeringTerm(vector, vector.default_strength)])
    print(f"{task}: zero-shot {zero_shot:.2f}, task vector {steered:.2f} (layer {vector.layers})")
    assert steered >= zero_shot + 0.30
