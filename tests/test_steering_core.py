"""The library's invariants on a tiny random model of every supported model type, for every method.

`tiny_lm` (tests/conftest.py) runs each test below once per tiny model in `steering.model.tiny.TINY_MODELS` (every
type, and variants of some); scripts/compat_table.py lists these tests in docs/COMPATIBILITY.md as what holds
each row.
"""

from __future__ import annotations

import copy
import inspect
import warnings

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from steering.generation.rows import GenerationRequest
from steering.generation.transformers.engine import Engine
from steering.methods import compute_vector
from steering.methods.capture import LastTokenRunner, next_token_logprobs
from steering.methods.common import DEFAULT_ANSWER_TOKENS, Job, greedy_answers
from steering.methods.registry import method_spec
from steering.model.arch import resolve_architecture
from steering.model.loading import LoadedModel
from steering.steer.inject import BatchSteering, SteeringError, SteeringTerm
from steering.tasks.answer_end import AnswerEnd
from steering.tasks.templates import DEFAULT_TEMPLATE
from steering.vectors.task_vector import FingerprintMismatch, TaskVector
from steering.wire.protocol import Demonstration
from tests.uncached_generation import generate_without_cache

PAIRS = [
    ("hot", "cold"),
    ("big", "small"),
    ("up", "down"),
    ("fast", "slow"),
    ("happy", "sad"),
    ("light", "dark"),
    ("open", "closed"),
    ("good", "bad"),
    ("early", "late"),
    ("yes", "no"),
    ("one", "two"),
    ("red", "blue"),
]
DEMOS = [Demonstration(input=a, output=b) for a, b in PAIRS]
# Lengths 7, 8, 3, 18 and 16 tokens: left padding of up to 15, and longer than the tiny sliding window.
PROMPTS = [
    "Q: hot\nA:",
    "Q: big dog\nA:",
    "France",
    "Q: the quick brown fox jumps\nA:",
    "Q: one two three four five\nA:",
]
FEW_SHOT = "Q: hot\nA: cold\n\nQ: big\nA: small\n\nQ: up\nA:"  # 30 tokens
FAST = {"num_prompts": 6, "k_shot": 3}
METHODS = {
    "task_vector": FAST,
    "function_vector": {**FAST, "num_corrupted": 3},
    "soft_injection": {**FAST, "steps": 4, "eval_every": 2, "batch_size": 8},
    "icv": FAST,
    "contrastive": FAST,
}
ALL_VECTORS = [*METHODS, "fv_attribution"]


@pytest.fixture(scope="module")
def vectors(tiny_lm: LoadedModel) -> dict[str, TaskVector]:
    computed = {m: compute_vector(tiny_lm, DEMOS, m, options=o) for m, o in METHODS.items()}
    computed["fv_attribution"] = compute_vector(
        tiny_lm, DEMOS, "function_vector", options={**FAST, "num_corrupted": 3, "head_selection": "attribution"}
    )
    return computed


def _requests(engine: Engine, plans, max_new_tokens: int = 6) -> list[GenerationRequest]:
    return [
        GenerationRequest(engine.encode(p), tuple(plan), max_new_tokens=max_new_tokens)
        for p, plan in zip(PROMPTS, plans, strict=True)
    ]


def _tokens(results) -> list[list[int]]:
    return [r.token_ids for r in results]


def test_plain_engine_matches_transformers_generate(tiny_lm: LoadedModel) -> None:
    engine = Engine(tiny_lm)
    results = engine.generate(_requests(engine, [()] * len(PROMPTS), max_new_tokens=8))
    for prompt, result in zip(PROMPTS, results, strict=True):
        ids = torch.tensor([engine.encode(prompt)])
        reference = tiny_lm.model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False, pad_token_id=0
        )[0, ids.shape[1] :].tolist()
        assert result.token_ids == reference[: len(result.token_ids)]


def test_the_cache_goes_by_the_name_this_transformers_gives_it(tiny_lm: LoadedModel, vectors) -> None:
    """transformers 5.25 renamed `past_key_values` to `cache` (the old name warns, and goes in 5.40); older releases
    (vLLM's pin) know only the old one: every pass of the engine and the methods uses the model's own."""
    assert tiny_lm.arch.cache_keyword in inspect.signature(tiny_lm.model.forward).parameters
    engine = Engine(tiny_lm)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine.generate(_requests(engine, [[SteeringTerm(vectors["task_vector"], 1.0)]] * len(PROMPTS)))
        compute_vector(tiny_lm, DEMOS, "context_tuning", options={"k_shot": 3, "epochs": 1})
    assert not [w for w in caught if "past_key_values" in str(w.message)]


@pytest.mark.parametrize("method", ALL_VECTORS)
def test_strength_zero_is_the_plain_model(tiny_lm: LoadedModel, vectors, method: str) -> None:
    engine = Engine(tiny_lm)
    plain = engine.generate(_requests(engine, [()] * len(PROMPTS)))
    zero = engine.generate(_requests(engine, [[SteeringTerm(vectors[method], 0.0)]] * len(PROMPTS)))
    assert _tokens(zero) == _tokens(plain)
    logprobs = next_token_logprobs(tiny_lm, PROMPTS, [[SteeringTerm(vectors[method], 0.0)]] * len(PROMPTS))
    assert torch.equal(logprobs, next_token_logprobs(tiny_lm, PROMPTS))


@pytest.mark.parametrize("method", ALL_VECTORS)
def test_steering_changes_the_output(tiny_lm: LoadedModel, vectors, method: str) -> None:
    vector = vectors[method]
    steered = next_token_logprobs(tiny_lm, PROMPTS, [[SteeringTerm(vector, 8.0, tuple(range(2)))]] * len(PROMPTS))
    assert not torch.allclose(steered, next_token_logprobs(tiny_lm, PROMPTS))


def test_batched_rows_match_single_runs_and_padding_does_not_move_vectors(tiny_lm: LoadedModel, vectors) -> None:
    """Prompts of different lengths are left-padded together, each with its own plan (one plain); each row
    must equal its solo run."""
    engine = Engine(tiny_lm)
    plans = [
        [SteeringTerm(vectors["task_vector"], 1.0)],
        [SteeringTerm(vectors["function_vector"], 4.0), SteeringTerm(vectors["icv"], -0.5)],
        [],
        [SteeringTerm(vectors["contrastive"], 3.0, (1,))],
        [SteeringTerm(vectors["soft_injection"], 1.0)],
    ]
    batched = engine.generate(_requests(engine, plans))
    alone = [engine.generate([request])[0] for request in _requests(engine, plans)]
    assert _tokens(batched) == _tokens(alone)


@pytest.mark.parametrize("method", ALL_VECTORS)
def test_left_padding_does_not_move_a_vector(tiny_lm: LoadedModel, vectors, method: str) -> None:
    """A short prompt steered beside a long one (padded by 27 tokens) scores as it does alone."""
    plan = [SteeringTerm(vectors[method], 2.0)]
    alone = next_token_logprobs(tiny_lm, [PROMPTS[0]], [plan])
    padded = next_token_logprobs(tiny_lm, [FEW_SHOT, PROMPTS[0]], [[], plan])[1:]
    assert torch.allclose(padded, alone, atol=1e-4), (padded - alone).abs().max()


@pytest.mark.parametrize(
    ("prompts", "repeats"),
    [((PROMPTS[0], PROMPTS[2]), 1), ((PROMPTS[0], PROMPTS[2]), 3), ((FEW_SHOT, PROMPTS[0], PROMPTS[3]), 3)],
    ids=["short", "short_repeated", "long_repeated"],
)
def test_cached_prefix_passes_equal_full_passes(
    tiny_lm: LoadedModel, vectors, prompts: tuple[str, ...], repeats: int
) -> None:
    """LastTokenRunner (function vectors' head scan, soft-injection training) runs the prefix once into a KV
    cache, then only the last token under many edits: every pass must equal a full forward pass, with
    prefixes shorter and longer than a sliding window."""
    rows = [p for p in prompts for _ in range(repeats)]
    runner = LastTokenRunner(tiny_lm, prompts, repeats=repeats)
    for plan in ([], [SteeringTerm(vectors["soft_injection"], 1.0)], [SteeringTerm(vectors["task_vector"], 1.0)], []):
        steering = BatchSteering.build([plan] * len(rows), tiny_lm.arch, 0, tiny_lm.device, tiny_lm.dtype)
        cached = torch.log_softmax(runner.logits(steering), dim=-1).cpu()
        full = next_token_logprobs(tiny_lm, rows, [plan] * len(rows))
        assert torch.allclose(cached, full, atol=1e-4), (cached - full).abs().max()


def _eager_copy(lm: LoadedModel) -> nn.Module:
    """The same weights under eager attention, which returns its attention weights; learned position embeddings
    (gpt2) zeroed so that layer 0's values depend on the token alone."""
    config = copy.deepcopy(lm.model.config)  # from_config writes the attention implementation into the config
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    model.load_state_dict(lm.model.state_dict())
    positions = getattr(getattr(model, "transformer", None), "wpe", None)
    if positions is not None:
        nn.init.zeros_(positions.weight)
    return model.eval()


def test_heads_split_where_the_model_computes_them(tiny_lm: LoadedModel) -> None:
    """The head hooks read the output projection's input as [heads, head_dim] blocks. On tokens a b a b, layer
    0's values are V(a), V(b) for every head, so block h at position t must be the head's own attention
    weights A[h, t] applied to them: solve V(a), V(b) from positions 0 and 1, predict positions 2 and 3.
    A wrong head order or an interleaved layout mixes heads whose weights differ, and the prediction fails."""
    model = _eager_copy(tiny_lm)
    arch = resolve_architecture(model)
    captured = []
    handle = arch.attn_out[0].register_forward_pre_hook(lambda _, args: captured.append(args[0][0]))
    try:
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([[5, 9, 5, 9]]), output_attentions=True)
    finally:
        handle.remove()
    weights = out.attentions[0][0].float()  # [heads, 4, 4]; with attention sinks (gpt_oss) rows sum below 1
    blocks = captured[0].float().view(4, arch.num_heads, arch.head_dim).transpose(0, 1)  # [heads, 4, head_dim]
    w = weights[..., None]
    value_a = blocks[:, 0] / w[:, 0, 0]
    value_b = (blocks[:, 1] - w[:, 1, 0] * value_a) / w[:, 1, 1]
    third = (w[:, 2, 0] + w[:, 2, 2]) * value_a + w[:, 2, 1] * value_b
    fourth = (w[:, 3, 0] + w[:, 3, 2]) * value_a + (w[:, 3, 1] + w[:, 3, 3]) * value_b
    assert torch.allclose(third, blocks[:, 2], atol=2e-3) and torch.allclose(fourth, blocks[:, 3], atol=2e-3)
    assert not torch.allclose(weights[0], weights[1], atol=1e-3)  # the heads differ, so the check has teeth


@pytest.mark.parametrize("method", list(METHODS))
def test_kv_cache_on_and_off_give_the_same_tokens(tiny_lm: LoadedModel, vectors, method: str) -> None:
    engine = Engine(tiny_lm)
    plans = [[SteeringTerm(vectors[method], 2.0)]] * len(PROMPTS)
    assert _tokens(engine.generate(_requests(engine, plans))) == _tokens(
        generate_without_cache(engine, _requests(engine, plans))
    )


@pytest.mark.parametrize("method", ALL_VECTORS)
def test_vector_round_trips_bit_identically(vectors, method: str) -> None:
    vector = vectors[method]
    back = TaskVector.from_bytes(vector.to_bytes())
    assert back.metadata() == vector.metadata()
    assert back.tensors.keys() == vector.tensors.keys()
    for name, tensor in vector.tensors.items():
        assert torch.equal(back.tensors[name], tensor.cpu()) and back.tensors[name].dtype == tensor.dtype


def test_methods_choose_settings_and_report_metrics(vectors) -> None:
    for method in METHODS:
        metrics = vectors[method].metrics
        assert {"dev_zero_shot_accuracy", "dev_few_shot_accuracy", "dev_steered_accuracy"} <= metrics.keys()
        assert vectors[method].layers and vectors[method].compute_seconds > 0


def test_sampling_with_a_seed_is_reproducible_and_batch_independent(tiny_llama: LoadedModel) -> None:
    engine = Engine(tiny_llama)

    def request(prompt: str, seed: int) -> GenerationRequest:
        return GenerationRequest(engine.encode(prompt), max_new_tokens=8, temperature=1.0, top_p=0.9, seed=seed)

    alone = engine.generate([request(PROMPTS[0], 7)])[0].token_ids
    batched = engine.generate([request(PROMPTS[1], 1), request(PROMPTS[0], 7)])[1].token_ids
    assert alone == batched
    assert engine.generate([request(PROMPTS[0], 8)])[0].token_ids != alone


def test_stop_strings_end_generation_and_are_not_returned(tiny_llama: LoadedModel) -> None:
    engine = Engine(tiny_llama)
    free = engine.generate([GenerationRequest(engine.encode(PROMPTS[0]), max_new_tokens=12)])[0]
    assert len(free.text) > 3
    stop = free.text[2:4]
    stopped = engine.generate([GenerationRequest(engine.encode(PROMPTS[0]), max_new_tokens=12, stop=[stop])])[0]
    assert stop not in stopped.text and stopped.finish_reason == "stop"
    assert free.text.startswith(stopped.text)


def test_greedy_answers_run_to_the_answer_rules_own_bound(tiny_llama: LoadedModel) -> None:
    """A task whose demonstrated answers are long is scored on whole answers, not cut at the default bound."""
    engine = Engine(tiny_llama)
    rule = AnswerEnd(max_tokens=DEFAULT_ANSWER_TOKENS + 8)
    whole = engine.generate([GenerationRequest(engine.encode(PROMPTS[0]), max_new_tokens=rule.max_tokens)])[0]
    assert len(whole.token_ids) > DEFAULT_ANSWER_TOKENS  # the model does not end the answer by itself first
    assert greedy_answers(tiny_llama, [PROMPTS[0]], [], rule) == [whole.text]


def test_streaming_yields_the_same_text(tiny_llama: LoadedModel) -> None:
    """The text pieces a generation streams (its per-step deltas) add up to its whole text."""
    engine = Engine(tiny_llama)
    request = GenerationRequest(engine.encode(PROMPTS[1]), max_new_tokens=10)
    whole = engine.generate([request])[0].text
    pieces: list[str] = []
    streamed = GenerationRequest(engine.encode(PROMPTS[1]), max_new_tokens=10)
    engine.generate([streamed], on_step=lambda deltas: pieces.extend(d.text for d in deltas))
    assert "".join(pieces) == whole


def test_hooks_are_removed_even_when_the_forward_raises(tiny_llama: LoadedModel) -> None:
    vector = compute_vector(tiny_llama, DEMOS, "task_vector", options=FAST)
    steering = BatchSteering.build(
        [[SteeringTerm(vector, 1.0)]], tiny_llama.arch, 3, tiny_llama.device, tiny_llama.dtype
    )
    with pytest.raises(RuntimeError), steering.attached(tiny_llama.arch):
        raise RuntimeError("boom")
    for module in tiny_llama.model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


def test_bad_layers_and_foreign_vectors_are_refused(tiny_llama: LoadedModel) -> None:
    vector = compute_vector(tiny_llama, DEMOS, "task_vector", options=FAST)
    with pytest.raises(SteeringError):
        BatchSteering.build(
            [[SteeringTerm(vector, 1.0, (7,))]], tiny_llama.arch, 3, tiny_llama.device, tiny_llama.dtype
        )
    with pytest.raises(FingerprintMismatch):
        vector.check_fingerprint("another-model@0000")


def test_auto_keeps_the_best_candidate_and_explains(tiny_llama: LoadedModel) -> None:
    vector = compute_vector(tiny_llama, DEMOS, "auto", options={**FAST, "candidates": ["task_vector", "contrastive"]})
    report = vector.metrics["auto"]
    assert report["chose"] == vector.method
    scores = {c["method"]: (c["dev_accuracy"], c["dev_logprob"]) for c in report["candidates"]}
    assert scores[vector.method] == max(scores.values())


def test_auto_measures_the_baselines_its_candidates_share_once(tiny_llama: LoadedModel) -> None:
    job = Job(tiny_llama, DEMOS, DEFAULT_TEMPLATE)
    vector = method_spec("auto").compute(job, {**FAST, "candidates": ["task_vector", "function_vector"]})
    assert [key[0] for key in job.memo].count("baseline") == 1
    alone = compute_vector(tiny_llama, DEMOS, "function_vector", options=FAST)
    for key in ("dev_zero_shot_exact", "dev_few_shot_exact", "dev_zero_shot_accuracy", "dev_few_shot_accuracy"):
        assert vector.metrics[key] == alone.metrics[key]
