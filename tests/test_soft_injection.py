"""Soft injection (SITE): gate training on tiny models, serialisation, and the steering invariants."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch

from steering.generation.rows import GenerationRequest
from steering.generation.transformers.engine import Engine
from steering.methods import Cancelled, compute_vector, options_model
from steering.methods.capture import next_token_logprobs
from steering.methods.soft_injection import SoftInjectionOptions
from steering.model.loading import LoadedModel, load_model
from steering.steer.inject import SteeringTerm
from steering.vectors.task_vector import TaskVector
from steering.wire.protocol import Demonstration

PAIRS = [
    ("hot", "cold"),
    ("big", "small"),
    ("up", "down"),
    ("happy", "sad"),
    ("fast", "slow"),
    ("light", "dark"),
    ("open", "closed"),
    ("good", "bad"),
    ("early", "late"),
    ("yes", "no"),
    ("cold", "hot"),
    ("small", "big"),
]
DEMOS = [Demonstration(input=i, output=o) for i, o in PAIRS]
FAST: dict[str, Any] = {"steps": 12, "eval_every": 4, "patience": 10, "num_prompts": 6, "k_shot": 3, "lr": 0.3}
QUERIES = ["Q: hot\nA:", "Q: up\nA:", "Q: good\nA:", "Q: fast\nA:"]


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def tiny(request: pytest.FixtureRequest) -> LoadedModel:
    return load_model(f"tiny:{request.param}")


@pytest.fixture(scope="module")
def vector(tiny: LoadedModel) -> TaskVector:
    # dev_fraction 0: the dev set is the training set, so the best gates are the lowest training loss.
    return compute_vector(tiny, DEMOS, "soft_injection", options={**FAST, "dev_fraction": 0.0})


def test_options_are_registered() -> None:
    assert options_model("soft_injection") is SoftInjectionOptions
    with pytest.raises(ValueError):
        SoftInjectionOptions(unknown=1)  # type: ignore[call-arg]


def test_training_lowers_the_loss(tiny: LoadedModel, vector: TaskVector) -> None:
    curve = vector.metrics["curve"]
    assert curve[0]["step"] == 0 and vector.metrics["best_step"] > 0
    assert vector.metrics["best_dev_loss"] < curve[0]["dev_loss"] - 0.05
    assert vector.metrics["train_steps"] == FAST["steps"]


def test_vector_shape_and_metadata(tiny: LoadedModel, vector: TaskVector) -> None:
    arch = tiny.arch
    assert vector.method == "soft_injection" and vector.mode == "head_mix_last"
    assert vector.tensors["head_means"].shape == (arch.num_layers, arch.num_heads, arch.head_dim)
    assert vector.tensors["gate_logits"].shape == (arch.num_layers, arch.num_heads)
    assert all(t.dtype == torch.float32 for t in vector.tensors.values())
    assert vector.layers == list(range(arch.num_layers))
    assert vector.default_strength in (0.5, 0.75, 1.0, 1.25)
    for key in ("dev_zero_shot_accuracy", "dev_few_shot_accuracy", "dev_steered_accuracy", "train_seconds"):
        assert key in vector.metrics


def test_round_trip_is_bit_identical(vector: TaskVector) -> None:
    back = TaskVector.from_bytes(vector.to_bytes())
    assert back.tensors.keys() == vector.tensors.keys()
    for name, tensor in vector.tensors.items():
        assert back.tensors[name].dtype == tensor.dtype and torch.equal(back.tensors[name], tensor)
    assert back.metadata() == vector.metadata()
    assert back.to_bytes() == vector.to_bytes()


def test_strength_zero_is_the_plain_model(tiny: LoadedModel, vector: TaskVector) -> None:
    plain = next_token_logprobs(tiny, QUERIES)
    zero = next_token_logprobs(tiny, QUERIES, [[SteeringTerm(vector, 0.0)]] * len(QUERIES))
    assert torch.equal(plain, zero)
    steered = next_token_logprobs(tiny, QUERIES, [[SteeringTerm(vector, 1.0)]] * len(QUERIES))
    assert not torch.equal(plain, steered)
    engine = Engine(tiny)
    ids = engine.encode(QUERIES[0])
    base = engine.generate([GenerationRequest(prompt_ids=ids, max_new_tokens=6)])
    off = engine.generate([GenerationRequest(prompt_ids=ids, steering=[SteeringTerm(vector, 0.0)], max_new_tokens=6)])
    assert off[0].token_ids == base[0].token_ids


def test_batch_rows_match_rows_alone(tiny: LoadedModel, vector: TaskVector) -> None:
    engine = Engine(tiny)
    requests = [
        GenerationRequest(
            prompt_ids=engine.encode(q), steering=[SteeringTerm(vector, s)] if s else [], max_new_tokens=6
        )
        for q, s in zip(QUERIES, (1.0, 0.0, 0.5, 2.0), strict=True)
    ]
    together = engine.generate(requests)
    for request, row in zip(requests, together, strict=True):
        assert engine.generate([request])[0].token_ids == row.token_ids


def test_restricted_layers_leave_the_others_untouched(tiny: LoadedModel) -> None:
    vector = compute_vector(tiny, DEMOS, "soft_injection", options={**FAST, "steps": 2, "layers": [1]})
    assert vector.layers == [1]
    assert torch.equal(torch.sigmoid(vector.tensors["gate_logits"][0]), torch.zeros(tiny.arch.num_heads))
    only_one = next_token_logprobs(tiny, QUERIES, [[SteeringTerm(vector, 1.0)]] * len(QUERIES))
    named = next_token_logprobs(tiny, QUERIES, [[SteeringTerm(vector, 1.0, (0, 1))]] * len(QUERIES))
    assert torch.equal(only_one, named)


def test_should_stop_cancels_training(tiny: LoadedModel) -> None:
    calls = itertools.count()
    seen: list[dict[str, Any]] = []
    with pytest.raises(Cancelled):
        compute_vector(
            tiny,
            DEMOS,
            "soft_injection",
            options={**FAST, "steps": 1000, "eval_every": 1},
            progress=seen.append,
            should_stop=lambda: next(calls) >= 4,
        )
    assert any(info.get("stage") == "training" for info in seen)


def test_runner_scores_a_teacher_forced_answer_as_a_full_forward_pass(tiny: LoadedModel) -> None:
    """Gates train on whole answers: the cached-prefix runner's logits at the last prompt token and at every
    answer token equal those of one plain forward pass over prompt + answer (rows of different lengths)."""
    from steering.methods.capture import LastTokenRunner, encode

    answers = [[5, 9, 13], [7], [11, 3]]
    runner = LastTokenRunner(tiny, QUERIES[:3], continuations=answers)
    got = runner.logits_all(None)
    assert torch.equal(runner.logits(None), got[:, 0])
    for row, (ids, answer) in enumerate(zip(encode(tiny, QUERIES[:3]), answers, strict=True)):
        with torch.inference_mode():
            full = (
                tiny.model(input_ids=torch.tensor([ids + answer], device=tiny.device)).logits[0, len(ids) - 1 :].float()
            )
        torch.testing.assert_close(got[row, : len(answer) + 1], full, atol=1e-4, rtol=1e-4)


def test_whole_answer_training_targets_end_with_the_separator(tiny: LoadedModel) -> None:
    from steering.methods.common import answer_ids, ended_answer_ids
    from steering.tasks.templates import DEFAULT_TEMPLATE

    demo = DEMOS[0]
    ended = ended_answer_ids(tiny, DEFAULT_TEMPLATE, demo)
    assert ended[:-1] == answer_ids(tiny, DEFAULT_TEMPLATE, demo)
    assert "\n" in tiny.tokenizer.decode([ended[-1]])
