"""The vLLM engine (steering/generation/vllm) on the real vLLM CPU engine, one engine for the whole module.

A tiny llama (head_dim 32, 4 heads) in float32 served with a small token budget per step (32), so a long prompt
is prefilled in several chunks, and 32-token KV blocks, so prompts share cached blocks. Invariants: plain vLLM
gives the transformers engine's tokens, and no steering or strength 0 gives plain vLLM's; every mode steers
as the transformers engine does, token for token; rows of a mixed batch (plain rows, other tasks and
strengths, a row joining mid-decode) equal their solo runs; a last-prompt-token vector does not move when the
prompt is split over chunks; prefix caching never shares blocks between plain and steered prompts; bad
references fail alone with `SteeringError` (422 in the app); tensor parallelism 2 gives TP 1's tokens, and a KV
prefix on two ranks sharing one key-value head gives the transformers engine's (slow); a KV prefix written over
placeholder tokens gives the transformers engine's tokens, alone and in mixed batches, and on sliding-window
layers with prompts far past the window (slow).

The engines agree token for token because both compute in float32 (logprobs within about 1e-5 here, against
gaps of 0.03 and more between the two best tokens); vLLM's "auto" dtype would run this model in bfloat16.

Run: `.venv-vllm/bin/python -m pytest -m vllm tests/test_vllm_engine.py`.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
import torch

from steering.generation.rows import GenerationRequest, GenerationResult
from steering.generation.transformers.engine import Engine
from steering.generation.vllm import kv_prefix
from steering.generation.vllm.engine import vector_id
from steering.model.loading import LoadedModel, load_model
from steering.steer.inject import SteeringError, SteeringTerm
from steering.steer.prefix_compose import PrefixComposer
from steering.vectors.modes import ACTIVATION_MODE_NAMES
from tests.vllm_fixtures import (
    EAGER_OPTIONS,
    LONG,
    PROMPTS,
    TinyVllm,
    every_mode_plans,
    needs_vllm,
    prefix_vector,
    random_vector,
    save_tiny_llama,
    start_engine,
)

pytestmark = [needs_vllm, pytest.mark.vllm]

CHUNK_TOKENS = EAGER_OPTIONS["max_num_batched_tokens"]


@pytest.fixture(scope="module")
def folder(tiny_vllm: TinyVllm) -> Path:
    return tiny_vllm.folder


@pytest.fixture(scope="module")
def lm(tiny_vllm: TinyVllm) -> LoadedModel:
    return tiny_vllm.lm


@pytest.fixture(scope="module")
def reference(tiny_vllm: TinyVllm) -> Engine:
    """The transformers engine on the same weights."""
    return tiny_vllm.reference


@pytest.fixture(scope="module")
def vllm(tiny_vllm: TinyVllm):
    return tiny_vllm.engine


def request(reference: Engine, prompt: str, terms=(), n: int = 8, **kwargs) -> GenerationRequest:
    return GenerationRequest(reference.encode(prompt), tuple(terms), max_new_tokens=n, **kwargs)


async def solo(vllm, req: GenerationRequest) -> GenerationResult:
    return await vllm.complete(req)


async def test_plain_vllm_equals_the_transformers_engine_and_strength_zero_is_plain(
    vllm, reference: Engine, lm: LoadedModel
) -> None:
    vector = random_vector(lm, "add_all", 1)
    for prompt in [*PROMPTS, LONG]:
        plain = await solo(vllm, request(reference, prompt))
        assert plain.token_ids == reference.generate([request(reference, prompt)])[0].token_ids, prompt
        zero = await solo(vllm, request(reference, prompt, [SteeringTerm(vector, 0.0)]))
        assert zero.token_ids == plain.token_ids
    sampled = dict(temperature=0.9, top_p=0.9, seed=7)
    plain = await solo(vllm, request(reference, PROMPTS[0], **sampled))
    zero = await solo(vllm, request(reference, PROMPTS[0], [SteeringTerm(vector, 0.0)], **sampled))
    assert zero.token_ids == plain.token_ids


@pytest.mark.parametrize("mode", ACTIVATION_MODE_NAMES)
async def test_every_mode_steers_as_the_transformers_engine(vllm, reference: Engine, lm: LoadedModel, mode) -> None:
    """Greedy tokens equal the transformers engine's, token for token, for every mode (tolerance: none)."""
    vector = random_vector(lm, mode, seed=3, scale=0.5)
    prompts = [PROMPTS[3], LONG]
    got = await asyncio.gather(*(solo(vllm, request(reference, p, [SteeringTerm(vector, 1.0)])) for p in prompts))
    want = reference.generate([request(reference, p, [SteeringTerm(vector, 1.0)]) for p in prompts])
    assert [r.token_ids for r in got] == [r.token_ids for r in want]
    plain = await solo(vllm, request(reference, PROMPTS[3]))
    assert got[0].token_ids != plain.token_ids, f"{mode} did not change anything"


async def test_mixed_batch_rows_equal_their_solo_runs(vllm, reference: Engine, lm: LoadedModel) -> None:
    vectors = {m: random_vector(lm, m, i, scale=0.5) for i, m in enumerate(ACTIVATION_MODE_NAMES)}
    plans = [
        [SteeringTerm(vectors["replace_last"], 0.8)],
        [],
        [SteeringTerm(vectors["add_from_last"], 0.7), SteeringTerm(vectors["add_last"], -0.5)],
        [SteeringTerm(vectors["head_mix_answer"], 0.9)],
        [SteeringTerm(vectors["add_all_norm"], 2.0), SteeringTerm(vectors["add_all"], 0.5, (0,))],
        [SteeringTerm(vectors["head_mix_last"], 1.0)],
    ]
    prompts = [PROMPTS[0], PROMPTS[3], PROMPTS[2], LONG, PROMPTS[4], PROMPTS[1]]
    lengths = [6, 10, 8, 7, 9, 5]

    def make(i: int) -> GenerationRequest:
        return request(reference, prompts[i], plans[i], lengths[i])

    alone = [await solo(vllm, make(i)) for i in range(len(plans))]
    await vllm.llm.reset_prefix_cache()

    async def first_rows(started: asyncio.Event) -> list[GenerationResult]:
        async def row(i: int) -> GenerationResult:
            async for item in vllm.generate(make(i)):
                if isinstance(item, GenerationResult):
                    return item
                started.set()  # a first row has decoded a token: the last row joins mid-decode
            raise AssertionError("no result")

        return list(await asyncio.gather(*(row(i) for i in range(len(plans) - 1))))

    async def joins_mid_decode(started: asyncio.Event) -> GenerationResult:
        await started.wait()
        assert vllm.in_flight >= 2
        return await solo(vllm, make(len(plans) - 1))

    started = asyncio.Event()
    together, joined = await asyncio.gather(first_rows(started), joins_mid_decode(started))
    for i, (a, b) in enumerate(zip(alone, [*together, joined], strict=True)):
        assert a.token_ids == b.token_ids, f"row {i} changed in the mixed batch"


async def test_chunked_prefill_does_not_move_a_last_token_vector(vllm, reference: Engine, lm: LoadedModel) -> None:
    """The prompt spans several 32-token chunks in vLLM and one pass in the transformers engine."""
    prompt_ids = reference.encode(LONG)
    assert len(prompt_ids) > 2 * CHUNK_TOKENS
    for mode in ("add_last", "replace_last", "head_mix_last"):
        vector = random_vector(lm, mode, seed=5, scale=0.5)
        got = await solo(vllm, request(reference, LONG, [SteeringTerm(vector, 1.0)]))
        want = reference.generate([request(reference, LONG, [SteeringTerm(vector, 1.0)])])[0]
        assert got.token_ids == want.token_ids, mode


async def test_prefix_cache_never_shares_steered_blocks(vllm, reference: Engine, lm: LoadedModel) -> None:
    vector = random_vector(lm, "add_all", seed=9, scale=0.5)
    other = random_vector(lm, "add_all", seed=10, scale=0.5)
    steered_req = request(reference, LONG, [SteeringTerm(vector, 1.0)])
    await vllm.llm.reset_prefix_cache()
    steered_fresh = await solo(vllm, steered_req)
    await vllm.llm.reset_prefix_cache()
    plain_fresh = await solo(vllm, request(reference, LONG))
    assert steered_fresh.token_ids != plain_fresh.token_ids
    # Plain blocks cached: a steered request must not reuse them, and the plain one not the steered ones.
    assert (await solo(vllm, steered_req)).token_ids == steered_fresh.token_ids
    assert (await solo(vllm, request(reference, LONG))).token_ids == plain_fresh.token_ids
    # Another vector, or another strength, is another plan: it shares nothing with the first.
    other_fresh = await solo(vllm, request(reference, LONG, [SteeringTerm(other, 1.0)]))
    await vllm.llm.reset_prefix_cache()
    assert (await solo(vllm, request(reference, LONG, [SteeringTerm(other, 1.0)]))).token_ids == other_fresh.token_ids
    # Plain and steered rows with a shared prefix in one batch.
    both = await asyncio.gather(solo(vllm, request(reference, LONG)), solo(vllm, steered_req))
    assert [r.token_ids for r in both] == [plain_fresh.token_ids, steered_fresh.token_ids]


async def test_bad_references_fail_alone(vllm, reference: Engine, lm: LoadedModel) -> None:
    good = request(reference, PROMPTS[0], [SteeringTerm(random_vector(lm, "add_all", 1, 0.5), 1.0)])
    alone = await solo(vllm, good)
    wrong_model = random_vector(lm, "add_all", 2)
    wrong_model.fingerprint = "another-model@0000"
    wrong_shape = random_vector(lm, "add_all", 3)
    wrong_shape.tensors["residual"] = torch.zeros(lm.arch.num_layers, 7)
    bad_terms = [
        (SteeringTerm(wrong_model, 1.0), "computed on model"),
        (SteeringTerm(wrong_shape, 1.0), "shape"),
        (SteeringTerm(random_vector(lm, "add_all", 4), 1.0, (99,)), "out of range"),
    ]
    prefix = SteeringTerm(prefix_vector(lm, 6, shots=3), 1.0)
    bad_plans = [([term], message) for term, message in bad_terms] + [
        ([prefix, SteeringTerm(prefix_vector(lm, 7, shots=3), 1.0)], "compose several first"),
        ([SteeringTerm(prefix.vector, 1.0, (0,))], "every layer"),
    ]
    for terms, message in bad_plans:
        outcome = await asyncio.gather(
            solo(vllm, good), solo(vllm, request(reference, PROMPTS[1], terms)), return_exceptions=True
        )
        assert isinstance(outcome[1], SteeringError) and message in str(outcome[1])
        assert outcome[0].token_ids == alone.token_ids
    vllm.serves_prefixes = False  # as for a model whose layers take none (`kv_prefix.attention_layers`)
    try:
        with pytest.raises(SteeringError, match="cannot take a KV prefix"):
            await solo(vllm, request(reference, PROMPTS[1], [prefix]))
    finally:
        vllm.serves_prefixes = True
    assert kv_prefix.attention_layers([(0, torch.nn.Linear(2, 2))], 64) is None  # no attention layer in it
    unknown_mode = random_vector(lm, "add_all", 5)
    unknown_mode.mode = "add_sideways"  # type: ignore[assignment]
    with pytest.raises(SteeringError, match="mode"):
        await solo(vllm, request(reference, PROMPTS[1], [SteeringTerm(unknown_mode, 1.0)]))
    too_many = [SteeringTerm(random_vector(lm, "add_all", 20 + i, 0.1), 0.1) for i in range(5)]
    with pytest.raises(SteeringError, match="at most 4"):
        await solo(vllm, request(reference, PROMPTS[1], too_many))


async def test_a_kv_prefix_steers_as_the_transformers_engine(vllm, reference: Engine, lm: LoadedModel) -> None:
    """The prefix's columns written over placeholder tokens give the tokens of the transformers engine, whose row
    cache starts from the prefix: at strength 1 and dimmed to 0.5, alone and beside an activation vector, over one
    prefill chunk and several (the 70-column prefix alone spans three); run again, the placeholders' blocks come
    from the prefix cache and the tokens stay; and the prefix changes the answer."""
    prefix = prefix_vector(lm, 1)
    assert prefix.prefix_tokens > 2 * CHUNK_TOKENS
    add = random_vector(lm, "add_from_last", 7, 0.5)
    plans = [
        [SteeringTerm(prefix, 1.0)],
        [SteeringTerm(prefix, 0.5)],
        [SteeringTerm(prefix, 1.0), SteeringTerm(add, 0.8)],
    ]
    for plan in plans:
        requests = [request(reference, p, plan) for p in (PROMPTS[0], PROMPTS[2], LONG)]
        want = [r.token_ids for r in reference.generate(requests)]
        assert [r.token_ids for r in await asyncio.gather(*(solo(vllm, r) for r in requests))] == want
        assert [(await solo(vllm, r)).token_ids for r in requests] == want  # the prefix cache's blocks
    plain = await solo(vllm, request(reference, PROMPTS[0]))
    assert (await solo(vllm, request(reference, PROMPTS[0], plans[0]))).token_ids != plain.token_ids


async def test_kv_prefix_rows_of_a_mixed_batch_equal_their_solo_runs(vllm, reference: Engine, lm: LoadedModel) -> None:
    """Two prefixes of different lengths, plain rows and activation-steered rows in flight at once; a prefix takes
    no vector slot (four vectors beside it); a third prefix evicts the least recently used one, which loads again."""
    long_prefix, short_prefix = prefix_vector(lm, 2), prefix_vector(lm, 3, shots=3)
    vectors = [random_vector(lm, "add_all", 50 + i, 0.3) for i in range(4)]
    plans = [
        [SteeringTerm(long_prefix, 1.0)],
        [],
        [SteeringTerm(short_prefix, 1.0), *(SteeringTerm(v, 0.5) for v in vectors)],
        [SteeringTerm(vectors[0], 1.0)],
        [SteeringTerm(long_prefix, 0.7)],
    ]
    prompts = [LONG, PROMPTS[0], PROMPTS[3], PROMPTS[2], PROMPTS[4]]
    requests = [request(reference, p, plan, 5 + i) for i, (p, plan) in enumerate(zip(prompts, plans, strict=True))]
    alone = [await solo(vllm, r) for r in requests]
    assert [r.token_ids for r in alone] == [r.token_ids for r in reference.generate(requests)]
    together = await asyncio.gather(*(solo(vllm, r) for r in requests))
    assert [r.token_ids for r in together] == [r.token_ids for r in alone]
    await solo(vllm, request(reference, PROMPTS[0], [SteeringTerm(prefix_vector(lm, 4), 1.0)]))  # evicts one
    loaded = set((await vllm.llm.collective_rpc("steer_loaded"))[0])
    assert vector_id(long_prefix) not in loaded  # the least recently used; 70 + 70 columns do not fit in 110
    await vllm.llm.reset_prefix_cache()  # the placeholders are computed again, and take the reloaded columns
    again = await asyncio.gather(*(solo(vllm, r) for r in requests[:3]))
    assert [r.token_ids for r in again] == [r.token_ids for r in alone[:3]]


async def test_composed_prefixes_steer_as_the_transformers_engine(vllm, reference: Engine, lm: LoadedModel) -> None:
    """Two prefix tasks composed as the service composes them (`steering.steer.prefix_compose`) are one prefix to
    vLLM: the transformers engine's tokens, and not those of either part alone."""
    first, second = prefix_vector(lm, 5, shots=3), prefix_vector(lm, 6, shots=2)
    plan = PrefixComposer(lm).compose([SteeringTerm(first, 0.8), SteeringTerm(second, 1.0)])
    requests = [request(reference, p, plan) for p in (PROMPTS[0], PROMPTS[2], LONG)]
    want = [r.token_ids for r in reference.generate(requests)]
    assert [r.token_ids for r in await asyncio.gather(*(solo(vllm, r) for r in requests))] == want
    parts = [await solo(vllm, request(reference, PROMPTS[0], [SteeringTerm(v, 1.0)])) for v in (first, second)]
    assert all(part.token_ids != want[0] for part in parts)


async def test_slots_evict_the_least_recently_used(vllm, reference: Engine, lm: LoadedModel) -> None:
    vectors = [random_vector(lm, "add_last", 30 + i, 0.5) for i in range(6)]
    first = await solo(vllm, request(reference, PROMPTS[0], [SteeringTerm(vectors[0], 1.0)]))
    for vector in vectors[1:]:
        await solo(vllm, request(reference, PROMPTS[0], [SteeringTerm(vector, 1.0)]))
    loaded = set((await vllm.llm.collective_rpc("steer_loaded"))[0])
    assert {vector_id(v) for v in vectors} & loaded == {vector_id(v) for v in vectors[2:]}  # the last four
    again = await solo(vllm, request(reference, PROMPTS[0], [SteeringTerm(vectors[0], 1.0)]))  # loaded again
    assert again.token_ids == first.token_ids


async def test_stop_strings_and_cancel(vllm, reference: Engine) -> None:
    plain = reference.generate([request(reference, PROMPTS[3], n=12)])[0]
    stop = plain.text[3:5]
    got = await solo(vllm, request(reference, PROMPTS[3], n=12, stop=[stop]))
    want = reference.generate([request(reference, PROMPTS[3], n=12, stop=[stop])])[0]
    assert (
        (got.text, got.finish_reason)
        == (want.text, want.finish_reason)
        == (plain.text[: plain.text.find(stop)], "stop")
    )
    cancel = threading.Event()
    pieces = []
    async for item in vllm.generate(request(reference, PROMPTS[0], n=400, cancel=cancel)):
        if isinstance(item, str):
            pieces.append(item)
            cancel.set()
        else:
            result = item
    assert result.finish_reason == "cancelled" and len(result.token_ids) < 400
    assert vllm.in_flight == 0


@pytest.mark.slow
async def test_tensor_parallel_2_gives_the_tokens_of_1(vllm, folder: Path, reference: Engine, lm: LoadedModel) -> None:
    """Two ranks, each with 2 of the 4 heads and 1 of the 2 key-value heads (and its slice of every per-head
    vector and KV prefix), against this module's single rank: plain, every mode, two tasks at once and a KV prefix,
    over one and several prefill chunks."""
    tp2 = await start_engine(folder, lm, **EAGER_OPTIONS, tensor_parallel_size=2)  # as this module's engine
    try:
        for plan in every_mode_plans(lm):
            requests = [request(reference, prompt, plan) for prompt in (PROMPTS[3], LONG)]
            one = await asyncio.gather(*(solo(vllm, r) for r in requests))
            two = await asyncio.gather(*(solo(tp2, r) for r in requests))
            assert [r.token_ids for r in two] == [r.token_ids for r in one], [t.vector.mode for t in plan]
    finally:
        tp2.close()


@pytest.mark.slow
async def test_tensor_parallel_2_shares_one_key_value_head(tmp_path: Path) -> None:
    """With fewer key-value heads than ranks vLLM gives each rank a copy of the one head: each rank writes the
    whole KV prefix, and the tokens are the transformers engine's (a prefix alone and beside a head mix)."""
    folder = save_tiny_llama(tmp_path / "one-kv-head", kv_heads=1)
    lm = load_model(str(folder))
    assert lm.arch.num_kv_heads == 1
    reference = Engine(lm)
    tp2 = await start_engine(folder, lm, **EAGER_OPTIONS, tensor_parallel_size=2)
    try:
        prefix, mix = prefix_vector(lm, 8), random_vector(lm, "head_mix_answer", 9, 0.5)
        for plan in ([SteeringTerm(prefix, 1.0)], [SteeringTerm(prefix, 0.8), SteeringTerm(mix, 1.0)]):
            requests = [request(reference, p, plan) for p in (PROMPTS[3], LONG)]
            got = await asyncio.gather(*(solo(tp2, r) for r in requests))
            assert [r.token_ids for r in got] == [r.token_ids for r in reference.generate(requests)]
    finally:
        tp2.close()


@pytest.mark.slow
async def test_a_kv_prefix_on_sliding_window_layers_steers_as_the_transformers_engine(tmp_path: Path) -> None:
    """A mistral whose two layers attend to their last 16 tokens, under a 70-column prefix: vLLM's window over the
    placeholders' cache gives the transformers engine's tokens (its window over the row's cache), at strength 1
    and 0.5 beside a head mix, on a prompt within the prefix's reach and on one far past it. Past it (two layers
    of 15 columns back), the answer is the plain one on both: the window holds over the prefix."""
    folder = save_tiny_llama(tmp_path / "windowed", sliding_window=16)
    lm = load_model(str(folder))
    assert lm.model.config.sliding_window == 16 and lm.arch.num_layers == 2
    reference = Engine(lm)
    windowed = await start_engine(folder, lm, **EAGER_OPTIONS)
    try:
        prefix, mix = prefix_vector(lm, 11), random_vector(lm, "head_mix_answer", 12, 0.5)
        plans = [[], [SteeringTerm(prefix, 1.0)], [SteeringTerm(prefix, 0.5), SteeringTerm(mix, 1.0)]]
        answers = []
        for plan in plans:
            requests = [request(reference, p, plan, 12) for p in (PROMPTS[0], PROMPTS[2], LONG)]
            want = [r.token_ids for r in reference.generate(requests)]
            assert [r.token_ids for r in await asyncio.gather(*(solo(windowed, r) for r in requests))] == want
            answers.append(want)
        plain, prefixed = answers[0], answers[1]
        assert prefixed[0] != plain[0] and prefixed[2] == plain[2]
    finally:
        windowed.close()
