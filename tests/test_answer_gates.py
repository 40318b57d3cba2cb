"""Soft injection's answer gates: a second head mix at every token after the last prompt token, where it acts,
that training sees it where generation applies it, and that it is kept only when held-out exact match rises."""

from __future__ import annotations

import pytest
import torch

from steering.generation.rows import GenerationRequest
from steering.generation.transformers.engine import Engine
from steering.methods import compute_vector
from steering.methods.capture import LastTokenRunner, encode, head_means, last_token_activations, next_token_logprobs
from steering.methods.soft_injection import ANSWER_SCALES, CLOSED
from steering.model.loading import LoadedModel, load_model
from steering.steer.inject import BatchSteering, SteeringTerm
from steering.vectors.modes import expected_shapes
from steering.vectors.task_vector import TaskVector
from steering.wire.protocol import Demonstration
from tests.test_soft_injection import DEMOS, FAST, QUERIES


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def tiny(request: pytest.FixtureRequest) -> LoadedModel:
    return load_model(f"tiny:{request.param}")


def _vectors(lm: LoadedModel) -> dict[str, TaskVector]:
    """One random head mix as `head_mix_last`, and as `head_mix_answer` with open and with closed answer gates."""
    gen = torch.Generator().manual_seed(3)
    shapes = expected_shapes(lm.arch)
    heads = {name: torch.randn(shapes[name], generator=gen) for name in ("head_means", "gate_logits")}
    answer_names = ("answer_head_means", "answer_gate_logits")
    answer = {name: torch.randn(shapes[name], generator=gen) for name in answer_names}
    closed = {**answer, "answer_gate_logits": torch.full(shapes["answer_gate_logits"], CLOSED)}
    layers = list(range(lm.arch.num_layers))

    def vector(mode: str, tensors: dict[str, torch.Tensor]) -> TaskVector:
        return TaskVector("soft_injection", mode, tensors, layers, 1.0, lm.fingerprint)  # type: ignore[arg-type]

    return {
        "last": vector("head_mix_last", heads),
        "answer": vector("head_mix_answer", {**heads, **answer}),
        "closed": vector("head_mix_answer", {**heads, **closed}),
    }


def _tokens(lm: LoadedModel, vector: TaskVector, prompt: str) -> list[int]:
    engine = Engine(lm)
    request = GenerationRequest(engine.encode(prompt), (SteeringTerm(vector, 1.0),), max_new_tokens=8)
    return engine.generate([request])[0].token_ids


def test_the_answer_mix_acts_only_after_the_last_prompt_token(tiny: LoadedModel) -> None:
    vectors = _vectors(tiny)
    plans = {k: [(SteeringTerm(v, 1.0),)] * len(QUERIES) for k, v in vectors.items()}
    prompt_only = {k: next_token_logprobs(tiny, QUERIES, p) for k, p in plans.items()}
    assert torch.equal(prompt_only["answer"], prompt_only["last"])
    for query in QUERIES:
        last, answer, closed = (_tokens(tiny, vectors[k], query) for k in ("last", "answer", "closed"))
        assert len(last) > 1 and closed == last
        assert answer[:1] == last[:1]  # the first token comes from the last prompt token's mix alone
    assert any(_tokens(tiny, vectors["answer"], q) != _tokens(tiny, vectors["last"], q) for q in QUERIES)


def test_training_sees_the_answer_mix_where_generation_applies_it(tiny: LoadedModel) -> None:
    """The cached-prefix runner (gate training) and one steered forward pass over prompt + answer (what the
    engine does while it generates) give the same logits at the last prompt token and every answer token."""
    term = SteeringTerm(_vectors(tiny)["answer"], 0.8)
    answers = [[5, 9, 13], [7], [11, 3]]
    runner = LastTokenRunner(tiny, QUERIES[:3], continuations=answers)
    steering = BatchSteering.build([(term,)] * 3, tiny.arch, 0, tiny.device, tiny.dtype)
    got = runner.logits_all(steering)
    for row, (ids, answer) in enumerate(zip(encode(tiny, QUERIES[:3]), answers, strict=True)):
        one = BatchSteering.build([(term,)], tiny.arch, len(ids), tiny.device, tiny.dtype)
        assert one is not None
        with torch.inference_mode(), one.attached(tiny.arch):
            full = tiny.model(input_ids=torch.tensor([ids + answer])).logits[0, len(ids) - 1 :].float()
        torch.testing.assert_close(got[row, : len(answer) + 1], full, atol=1e-4, rtol=1e-4)


def test_head_means_at_the_last_token_are_those_of_the_prompts_alone(tiny: LoadedModel) -> None:
    """Read in one pass with the answers after them, the last prompt tokens' head means are what the prompts
    alone give, at any batching."""
    answers = [[5, 9, 13], [7], [11, 3], [4, 4]]
    alone = last_token_activations(tiny, QUERIES, heads=True)["heads"].mean(0)
    assert head_means(tiny, QUERIES).answer is None
    for batch_size in (1, 3, 16):
        torch.testing.assert_close(head_means(tiny, QUERIES, batch_size=batch_size).last, alone, atol=1e-5, rtol=1e-4)
        read = head_means(tiny, QUERIES, answers, batch_size=batch_size)
        torch.testing.assert_close(read.last, alone, atol=1e-5, rtol=1e-4)


def test_answer_head_means_do_not_depend_on_batching(tiny: LoadedModel) -> None:
    answers = [[5, 9, 13], [7], [11, 3], [4, 4]]
    together = head_means(tiny, QUERIES, answers, batch_size=16).answer
    one_by_one = head_means(tiny, QUERIES, answers, batch_size=1).answer
    arch = tiny.arch
    assert together.shape == (arch.num_layers, arch.num_heads, arch.head_dim)
    torch.testing.assert_close(together, one_by_one, atol=1e-5, rtol=1e-4)


def test_answer_gates_are_kept_only_when_held_out_exact_match_rises(tiny: LoadedModel) -> None:
    vector = compute_vector(tiny, DEMOS, "soft_injection", options={**FAST, "dev_fraction": 0.0})
    report = vector.metrics["answer_gates"]
    exact = report["exact_by_share"]
    assert set(exact) == {"0", *(f"{s:g}" for s in ANSWER_SCALES)}
    best = max(exact.values())
    assert exact[f"{report['share']:g}"] == best == vector.metrics["dev_steered_exact"]
    assert report["share"] == min(float(s) for s, value in exact.items() if value == best)
    assert (vector.mode == "head_mix_answer") == (report["share"] > 0)
    assert vector.metrics["answer_gates_share"] == report["share"]  # the flat copy summaries keep
    assert report["train_steps"] >= 1 and report["curve"][0]["step"] == 0


def test_answer_gates_are_trained_only_for_answers_longer_than_a_token(tiny: LoadedModel) -> None:
    opted_out = compute_vector(tiny, DEMOS, "soft_injection", options={**FAST, "answer_gates": False})
    assert opted_out.mode == "head_mix_last" and "answer_gates" not in opted_out.metrics
    # On the tiny tokenizer " b" is one token: every answer is its first token, nothing comes after it.
    one_token = [Demonstration(input=word, output="b") for word, _ in [(d.input, d.output) for d in DEMOS]]
    single = compute_vector(tiny, one_token, "soft_injection", options=FAST)
    assert single.mode == "head_mix_last" and "answer_gates" not in single.metrics
