"""The compiled form of vLLM steering (ops installed at load, persistent buffers; `graph_loader.py`), on the real
vLLM CPU engine compiled with torch.compile (inductor), against the eager form on the same tiny llama.

Invariants: compiled steered tokens equal eager steered tokens in every mode, over one and several prefill
chunks, and for rows of a mixed batch (several tasks per request, layer overrides, negative strengths, plain
rows, KV prefixes); strength 0 compiled is plain compiled (greedy and sampled); a compiled steered row is never
the plain row; the compiled model gets a compile-cache key of its own; a model compiled without the ops is refused.
The eager form is held to the transformers engine by `test_vllm_engine.py`.

Each compiled start costs minutes of torch.compile on 2 cores: one compiled engine serves the module.
Run: `.venv-vllm/bin/python -m pytest -m vllm tests/test_vllm_compiled.py`.
"""

from __future__ import annotations

import asyncio

import pytest

from steering.generation.rows import GenerationRequest, GenerationResult
from steering.generation.transformers.engine import Engine
from steering.steer.inject import SteeringTerm
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
    start_engine,
)

pytestmark = [needs_vllm, pytest.mark.vllm]


@pytest.fixture(scope="module")
async def engines(tiny_vllm: TinyVllm):
    """The session's eager engine, and a compiled one started with the same options."""
    compiled = await start_engine(tiny_vllm.folder, tiny_vllm.lm, enforce_eager=False, **EAGER_OPTIONS)
    yield tiny_vllm.engine, compiled
    compiled.close()


def request(tokens: Engine, prompt: str, terms=(), n: int = 8, **kwargs) -> GenerationRequest:
    return GenerationRequest(tokens.encode(prompt), tuple(terms), max_new_tokens=n, **kwargs)


async def both(engines, req: GenerationRequest) -> tuple[GenerationResult, GenerationResult]:
    eager, compiled = engines
    return await eager.complete(req), await compiled.complete(req)


def test_the_compiled_form_has_a_compile_cache_key_of_its_own(tiny_vllm: TinyVllm) -> None:
    """vLLM keys compiled artifacts by its config: the stock model's must never be loaded for the steered one."""
    from vllm.engine.arg_utils import EngineArgs

    from steering.generation.vllm import graph_loader

    def config_hash(**extra: object) -> str:
        args = EngineArgs(model=str(tiny_vllm.folder), dtype="float32", max_model_len=512, **extra)  # type: ignore[arg-type]
        return args.create_engine_config().compute_hash()

    stock = config_hash()
    steered = config_hash(
        load_format=graph_loader.LOAD_FORMAT, additional_config=graph_loader.additional_config(4, 110)
    )
    assert steered != stock
    assert config_hash(
        load_format=graph_loader.LOAD_FORMAT, additional_config=graph_loader.additional_config(4, 110)
    ) == (steered)


async def test_the_engines_run_the_forms_asked_for(engines) -> None:
    eager, compiled = engines
    assert compiled.llm.vllm_config.compilation_config.mode.name != "NONE"
    assert not compiled.llm.vllm_config.model_config.enforce_eager
    forms = [info["form"] for info in await compiled.llm.collective_rpc("steer_install", args=(4, 110))]
    assert forms == ["compiled"]
    assert [info["form"] for info in await eager.llm.collective_rpc("steer_install", args=(4, 110))] == ["eager"]


@pytest.mark.parametrize("mode", ACTIVATION_MODE_NAMES)
async def test_compiled_steers_as_eager_in_every_mode(engines, tiny_vllm: TinyVllm, mode) -> None:
    """Greedy tokens equal token for token, one prefill chunk and several; and the steered row is not plain."""
    vector = random_vector(tiny_vllm.lm, mode, seed=3, scale=0.5)
    for prompt in (PROMPTS[3], LONG):
        eager, compiled = await both(engines, request(tiny_vllm.reference, prompt, [SteeringTerm(vector, 1.0)]))
        assert compiled.token_ids == eager.token_ids, prompt
    plain = await engines[1].complete(request(tiny_vllm.reference, PROMPTS[3]))
    steered = await engines[1].complete(request(tiny_vllm.reference, PROMPTS[3], [SteeringTerm(vector, 1.0)]))
    assert steered.token_ids != plain.token_ids, f"{mode} left the compiled row plain"


async def test_compiled_mixed_batch_rows_equal_eager_solo_rows(engines, tiny_vllm: TinyVllm) -> None:
    """Rows with several tasks, layer overrides and negative strengths, beside plain rows, all in flight at once
    on the compiled engine, each equal to its eager solo run (more vectors than slots: columns are reused)."""
    vectors = {m: random_vector(tiny_vllm.lm, m, i + 40, scale=0.5) for i, m in enumerate(ACTIVATION_MODE_NAMES)}
    plans = [
        [SteeringTerm(vectors["replace_last"], 0.8), SteeringTerm(vectors["add_all"], -0.6, (1,))],
        [],
        [SteeringTerm(vectors["add_from_last"], 0.7), SteeringTerm(vectors["add_last"], -0.5)],
        [SteeringTerm(vectors["head_mix_answer"], 0.9), SteeringTerm(vectors["add_all_norm"], 2.0)],
        [SteeringTerm(vectors["head_mix_last"], 1.0), SteeringTerm(vectors["head_mix_answer"], 0.5, (0,))],
        [],
    ]
    prompts = [PROMPTS[0], PROMPTS[3], LONG, PROMPTS[2], PROMPTS[4], LONG]
    requests = [
        request(tiny_vllm.reference, p, plan, 6 + i) for i, (p, plan) in enumerate(zip(prompts, plans, strict=True))
    ]
    eager, compiled = engines
    alone = [await eager.complete(r) for r in requests]
    together = await asyncio.gather(*(compiled.complete(r) for r in requests))
    assert [r.token_ids for r in together] == [r.token_ids for r in alone]


async def test_compiled_kv_prefix_rows_equal_eager_solo_rows(engines, tiny_vllm: TinyVllm) -> None:
    """KV prefixes (their columns written over placeholders by ops traced into the graph) beside plain and
    activation-steered rows, all at once on the compiled engine, each equal to its eager solo run; the prefix
    changes the compiled row."""
    lm, tokens = tiny_vllm.lm, tiny_vllm.reference
    prefix, short = prefix_vector(lm, 11), prefix_vector(lm, 12, shots=3)
    add = random_vector(lm, "add_from_last", 13, scale=0.5)
    plans = [
        [SteeringTerm(prefix, 1.0)],
        [],
        [SteeringTerm(short, 0.6), SteeringTerm(add, 0.8)],
        [SteeringTerm(add, 1.0)],
    ]
    prompts = [LONG, PROMPTS[0], PROMPTS[3], PROMPTS[2]]
    requests = [request(tokens, p, plan, 6) for p, plan in zip(prompts, plans, strict=True)]
    eager, compiled = engines
    alone = [await eager.complete(r) for r in requests]
    together = await asyncio.gather(*(compiled.complete(r) for r in requests))
    assert [r.token_ids for r in together] == [r.token_ids for r in alone]
    plain = await compiled.complete(request(tokens, LONG, n=6))
    assert together[0].token_ids != plain.token_ids, "the prefix left the compiled row plain"


async def test_strength_zero_compiled_is_plain_compiled(engines, tiny_vllm: TinyVllm) -> None:
    """Also beside steered rows in the same forwards: the ops leave row-0 tokens exactly as they were."""
    compiled = engines[1]
    vector = random_vector(tiny_vllm.lm, "head_mix_answer", 1)
    steering = random_vector(tiny_vllm.lm, "add_all", 2)
    for prompt in (*PROMPTS[:3], LONG):
        plain = await compiled.complete(request(tiny_vllm.reference, prompt))
        zero, _ = await asyncio.gather(
            compiled.complete(request(tiny_vllm.reference, prompt, [SteeringTerm(vector, 0.0)])),
            compiled.complete(request(tiny_vllm.reference, prompt, [SteeringTerm(steering, 1.0)])),
        )
        assert zero.token_ids == plain.token_ids, prompt
    sampled = dict(temperature=0.9, top_p=0.9, seed=7)
    plain = await compiled.complete(request(tiny_vllm.reference, PROMPTS[0], n=12, **sampled))
    zero = await compiled.complete(
        request(tiny_vllm.reference, PROMPTS[0], [SteeringTerm(vector, 0.0)], n=12, **sampled)
    )
    assert zero.token_ids == plain.token_ids


@pytest.mark.slow
async def test_compiled_tensor_parallel_2_gives_the_tokens_of_eager_1(tiny_vllm: TinyVllm) -> None:
    """Two compiled ranks, each with the ops on its 2 of the 4 heads (its slice of every per-head table), against
    the session's eager single rank: plain, every mode, two tasks at once and a KV prefix (each rank its key-value
    head), over one and several prefill chunks."""
    lm = tiny_vllm.lm
    tp2 = await start_engine(tiny_vllm.folder, lm, enforce_eager=False, tensor_parallel_size=2, **EAGER_OPTIONS)
    try:
        assert [info["form"] for info in await tp2.llm.collective_rpc("steer_install", args=(4, 110))] == [
            "compiled"
        ] * 2
        for plan in every_mode_plans(lm):
            for prompt in (PROMPTS[3], LONG):
                req = request(tiny_vllm.reference, prompt, plan)
                two, one = await tp2.complete(req), await tiny_vllm.engine.complete(req)
                assert two.token_ids == one.token_ids, [t.vector.mode for t in plan]
    finally:
        tp2.close()


async def test_a_compiled_model_without_the_ops_is_refused(tiny_vllm: TinyVllm) -> None:
    """vLLM compiled without the steering loader (hooks would be added after compiling, and skipped): the worker
    extension refuses to install rather than serve every row plain."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    from steering.generation.vllm.engine import WORKER_EXTENSION

    args = AsyncEngineArgs(
        model=str(tiny_vllm.folder),
        dtype="float32",
        max_model_len=512,
        kv_cache_memory_bytes=64 << 20,
        worker_extension_cls=WORKER_EXTENSION,
        disable_log_stats=True,
    )
    llm = AsyncLLM.from_engine_args(args)
    try:
        assert not llm.vllm_config.model_config.enforce_eager
        with pytest.raises(Exception, match="compiled model skips steering hooks"):
            await llm.collective_rpc("steer_install", args=(4, 110))
    finally:
        llm.shutdown()


@pytest.mark.parametrize(
    ("setting", "cuda", "eager"),
    [(None, False, True), (None, True, False), ("auto", False, True), ("0", False, False), ("1", True, True)],
)
def test_the_form_follows_the_setting_and_the_device(monkeypatch, setting: str | None, cuda: bool, eager: bool) -> None:
    """Unset or `auto`: compiled where CUDA is present, eager on a CPU (where vLLM 0.32 compiles at every start);
    0 and 1 force the form."""
    import torch

    from steering.generation.vllm.options import EAGER_ENV, VllmOptions

    if setting is None:
        monkeypatch.delenv(EAGER_ENV, raising=False)
    else:
        monkeypatch.setenv(EAGER_ENV, setting)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert VllmOptions().eager() is eager
    assert VllmOptions(enforce_eager=not eager).eager() is (not eager)
