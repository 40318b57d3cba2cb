"""A start-up check that steering acts in the running vLLM: one token plain, one steered, compared.

A model compiled without the steering ops (hooks added after compiling, a compile-cache artifact of the stock
model, an unsupported model runner) would serve every row plain and say nothing. So the engine loads a
random vector into the workers, asks for one greedy token of the same prompt plain and steered by it at
every layer, and refuses to start unless the steered token's log-probability differs from the plain one's.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from steering.generation.vllm.plan import EXTRA_ARGS_KEY, PlannedTerm, cache_salt, encode_plan
from steering.vectors.modes import ModelShape
from steering.vectors.task_vector import TaskVector

_PROMPT = [1, 2, 3, 4, 5, 6, 7, 8]


async def check_steering_acts(llm: Any, dims: ModelShape) -> None:
    """Raise `RuntimeError` when a vector added at every layer leaves the first token's log-probability alone."""
    generator = torch.Generator().manual_seed(0)
    residual = torch.randn(dims.num_layers, dims.hidden_size, generator=generator)
    layers = list(range(dims.num_layers))
    probe = TaskVector("contrastive", "add_all", {"residual": residual}, layers, 1.0, "vllm-self-check")
    data = probe.to_bytes()
    probe_id = hashlib.sha256(data).hexdigest()
    plan = encode_plan([PlannedTerm(probe_id, 4.0, tuple(layers))])
    assert plan is not None
    await llm.collective_rpc("steer_load", args=(probe_id, data))
    try:
        plain = await _first_logprob(llm, None, "plain")
        steered = await _first_logprob(llm, plan, "steered")
    finally:
        await llm.collective_rpc("steer_unload", args=([probe_id],))
    if plain == steered:
        raise RuntimeError(
            "steering does not act in this vLLM: a steered token came out exactly as the plain one "
            f"(log-probability {plain}); the model runs without the steering ops"
        )


async def _first_logprob(llm: Any, plan: str | None, name: str) -> float:
    from vllm import SamplingParams

    params = SamplingParams(
        max_tokens=1,
        temperature=0.0,
        logprobs=0,
        detokenize=False,
        extra_args={EXTRA_ARGS_KEY: plan} if plan is not None else None,
    )
    prompt: dict[str, Any] = {"prompt_token_ids": list(_PROMPT)}
    if plan is not None:
        prompt["cache_salt"] = cache_salt(plan)
    final = None
    async for output in llm.generate(prompt, params, f"steering-self-check-{name}"):
        final = output
    assert final is not None
    logprob = final.outputs[0].cumulative_logprob
    assert logprob is not None
    return float(logprob)
