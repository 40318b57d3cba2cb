"""vLLM steered answers equal the transformers engine's on the real default model (SmolLM2-135M, float32).

Both engines get the same vectors, read from the model's own activations on the antonyms task (a task vector,
a contrastive difference, last-token head means with chosen gates), in every injection mode at strengths that
change the answers. Agreement held: identical greedy tokens, 16 per answer, 3 queries answered as one batch in
each engine, per mode (tolerance: none; the two engines' float32 logits differ by rounding only).

Run: `.venv-vllm/bin/python -m pytest -m vllm tests/test_vllm_default_model.py`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
import torch

from steering.generation.rows import GenerationRequest
from steering.generation.transformers.engine import Engine
from steering.generation.vllm.model_folder import vllm_model_folder
from steering.methods.capture import last_token_activations
from steering.model.loading import LoadedModel, default_cache_dir
from steering.steer.inject import SteeringTerm
from steering.tasks.datasets import load_task, split_task
from steering.tasks.templates import DEFAULT_TEMPLATE, render_example, render_query
from steering.vectors.modes import MODE_NAMES
from steering.vectors.task_vector import TaskVector
from tests.vllm_fixtures import needs_vllm, start_engine

pytestmark = [needs_vllm, pytest.mark.vllm, pytest.mark.slow]

ANSWER_TOKENS = 16
LAYER = 12


@pytest.fixture(scope="module")
def reference(default_lm: LoadedModel) -> Engine:
    return Engine(default_lm)


@pytest.fixture(scope="module")
async def vllm(default_lm: LoadedModel):
    folder = await asyncio.to_thread(vllm_model_folder, default_lm, default_lm.name, default_cache_dir())
    engine = await start_engine(folder, default_lm, max_num_batched_tokens=64, kv_cache_bytes=256 << 20)
    yield engine
    engine.close()


def steering_per_mode(lm: LoadedModel) -> tuple[list[str], dict[str, SteeringTerm]]:
    """Three test queries, and one term per mode built from the model's activations on antonyms."""
    demos, test = split_task(load_task("antonyms"), 20, 3, seed=0)
    few_shot = [
        "".join(render_example(DEFAULT_TEMPLATE, d) for d in demos[i : i + 5])
        + render_query(DEFAULT_TEMPLATE, demos[i + 5].input)
        for i in range(0, 12, 2)
    ]
    acts = last_token_activations(lm, few_shot, heads=True)
    outputs = last_token_activations(lm, [render_query(DEFAULT_TEMPLATE, d.output) for d in demos])["residual"]
    inputs = last_token_activations(lm, [render_query(DEFAULT_TEMPLATE, d.input) for d in demos])["residual"]
    task, difference, means = acts["residual"].mean(0), (outputs - inputs).mean(0), acts["heads"].mean(0)
    gates = torch.full((lm.arch.num_layers, lm.arch.num_heads), -6.0)
    gates[8:14, :3] = 1.0  # three heads of six middle layers mix in their means

    def vector(mode: str, **tensors: torch.Tensor) -> TaskVector:
        method = "soft_injection" if mode.startswith("head_mix") else "contrastive"
        return TaskVector(method, mode, tensors, [LAYER], 1.0, lm.fingerprint)  # type: ignore[arg-type]

    heads = {"head_means": means, "gate_logits": gates}
    answer_heads = {**heads, "answer_head_means": means.clone(), "answer_gate_logits": gates - 2.0}
    every_layer = tuple(range(lm.arch.num_layers))
    terms = {
        "add_all": SteeringTerm(vector("add_all", residual=difference), 4.0),
        "add_all_norm": SteeringTerm(vector("add_all_norm", residual=difference), 0.5, tuple(range(8, 16))),
        "add_from_last": SteeringTerm(vector("add_from_last", residual=difference), 4.0),
        "add_last": SteeringTerm(vector("add_last", residual=difference), 4.0),
        "replace_last": SteeringTerm(vector("replace_last", residual=task), 1.0),
        "head_mix_last": SteeringTerm(vector("head_mix_last", **heads), 1.0, every_layer),
        "head_mix_answer": SteeringTerm(vector("head_mix_answer", **answer_heads), 1.0, every_layer),
    }
    assert set(terms) == set(MODE_NAMES)
    return [render_query(DEFAULT_TEMPLATE, d.input) for d in test], terms


async def answers(vllm, reference: Engine, queries: list[str], terms: Sequence[SteeringTerm]):
    def requests() -> list[GenerationRequest]:
        return [GenerationRequest(reference.encode(q), tuple(terms), ANSWER_TOKENS) for q in queries]

    got = await asyncio.gather(*(vllm.complete(r) for r in requests()))
    want = reference.generate(requests())
    return [r.token_ids for r in got], [r.token_ids for r in want]


async def test_steered_answers_equal_the_transformers_engine_in_every_mode(
    vllm, reference: Engine, default_lm: LoadedModel
) -> None:
    queries, terms = steering_per_mode(default_lm)
    plain, plain_want = await answers(vllm, reference, queries, ())
    assert plain == plain_want
    for mode, term in terms.items():
        got, want = await answers(vllm, reference, queries, [term])
        assert got == want, mode
        assert got != plain, f"{mode} changed no answer: the comparison would prove nothing"
