"""Function vectors (Todd et al. 2023, "Function Vectors in Large Language Models").

Heads whose mean output, patched into prompts with shuffled labels, restores the right answer are
the task's causal heads. Their mean outputs, projected through the attention output projection and
summed, form one residual vector that is added at a chosen layer.

Head selection:
- `causal` (default): patch each head's mean into the corrupted prompts and measure the gain in the
  right answer's probability. One batched pass per layer: every head of the layer is patched in its
  own copy of each prompt, and only the last token is re-run on a cached prefix.
- `attribution`: a first-order estimate of the same effect from one backward pass (the gradient of
  the answer's log-probability with respect to each head's mixing gate). Seconds instead of a
  layer-by-layer scan on deep models, but it misses non-linear effects and can rank heads differently.
"""

from __future__ import annotations

import random
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from steering.methods.capture import LastTokenRunner, head_means
from steering.methods.common import (
    Candidate,
    DevSet,
    Job,
    MethodOptions,
    MethodSpec,
    answer_token,
    choose,
    few_shot_prompts,
    finish,
    layer_grid,
    new_vector,
    split_demonstrations,
    strength_grid,
)
from steering.model.loading import LoadedModel
from steering.steer.inject import BatchSteering, LayerEdit, SteeringTerm
from steering.tasks.templates import sample_few_shot_prompts
from steering.vectors.task_vector import TaskVector


class FunctionVectorOptions(MethodOptions):
    num_heads: int | None = Field(None, ge=1, description="Heads summed into the vector; chosen on dev if unset.")
    head_selection: Literal["causal", "attribution"] = "causal"
    num_corrupted: int = Field(12, ge=1, le=128, description="Shuffled-label prompts used to score heads.")
    positions: Literal["last", "from_last"] = Field(
        "last", description="Add at the last prompt token only, or also at every generated token."
    )


def _one_hot_heads(rows: int, num_heads: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """[rows * heads, heads, 1]: row r patches head r % heads."""
    eye = torch.eye(num_heads, device=device, dtype=dtype)
    return eye.repeat(rows, 1)[:, :, None]


def causal_head_scores(lm: LoadedModel, job: Job, prompts: list[str], answers: Tensor, means: Tensor) -> Tensor:
    """[layers, heads]: mean gain in P(right answer) when the head's task mean is patched in."""
    heads, n = lm.arch.num_heads, len(prompts)
    runner = LastTokenRunner(lm, prompts, repeats=heads)
    rows = torch.arange(n * heads)
    target_ids = answers.repeat_interleave(heads).to(lm.device)
    clean = torch.softmax(runner.logits(None), -1)[rows, target_ids].view(n, heads)[:, 0]
    coef = _one_hot_heads(n, heads, lm.device, lm.dtype)
    scores = torch.zeros(lm.arch.num_layers, heads)
    for layer in range(lm.arch.num_layers):
        job.check()
        job.report(stage="scoring heads", layer=layer, layers=lm.arch.num_layers)
        target = coef * means[layer].to(lm.device, lm.dtype)[None]
        steering = BatchSteering.from_edits({layer: LayerEdit(head_coef=coef, head_target=target)}, 0)
        patched = torch.softmax(runner.logits(steering), -1)[rows, target_ids].view(n, heads)
        scores[layer] = (patched - clean[:, None]).mean(0).cpu()
    return scores


def attribution_head_scores(lm: LoadedModel, prompts: list[str], answers: Tensor, means: Tensor) -> Tensor:
    """[layers, heads]: gradient of log P(right answer) w.r.t. a gate that mixes in each head's mean."""
    runner = LastTokenRunner(lm, prompts)
    n, heads = len(prompts), lm.arch.num_heads
    gates = torch.zeros(lm.arch.num_layers, n, heads, 1, device=lm.device, dtype=lm.dtype, requires_grad=True)
    edits = {
        layer: LayerEdit(head_coef=gates[layer], head_target=gates[layer] * means[layer].to(lm.device, lm.dtype)[None])
        for layer in range(lm.arch.num_layers)
    }
    logits = runner.logits(BatchSteering.from_edits(edits, 0), grad=True)
    torch.log_softmax(logits, -1)[torch.arange(n), answers.to(lm.device)].sum().backward()
    return gates.grad.float().mean(1).squeeze(-1).cpu()


def head_vector(lm: LoadedModel, means: Tensor, chosen: list[tuple[int, int]]) -> Tensor:
    """Sum of the chosen heads' mean outputs, each projected alone through its layer's output projection."""
    arch = lm.arch
    total = torch.zeros(arch.hidden_size)
    with torch.no_grad():
        for layer, head in chosen:
            out_proj = arch.attn_out[layer]
            slot = torch.zeros(1, arch.num_heads * arch.head_dim, device=lm.device, dtype=lm.dtype)
            start = head * arch.head_dim
            slot[0, start : start + arch.head_dim] = means[layer, head].to(lm.device, lm.dtype)
            projected = out_proj(slot) - out_proj(torch.zeros_like(slot))  # without the projection's bias
            total += projected[0].float().cpu()
    return total


def top_heads(scores: Tensor, k: int) -> list[tuple[int, int]]:
    flat = scores.flatten().topk(min(k, scores.numel())).indices.tolist()
    return [divmod(i, scores.shape[1]) for i in flat]


def compute(job: Job, options: dict) -> TaskVector:
    opts = FunctionVectorOptions(**options)
    lm, template = job.lm, job.template
    split = split_demonstrations(job.demonstrations, opts.dev_fraction, opts.seed)
    job.report(stage="reading head activations")
    means = head_means(lm, few_shot_prompts(job, split.train, opts)).last

    rng = random.Random(opts.seed + 2)
    queries = [rng.choice(split.train) for _ in range(opts.num_corrupted)]
    corrupted = sample_few_shot_prompts(template, split.train, queries, opts.k_shot, rng, shuffle_labels=True)
    answers = torch.tensor([answer_token(lm, template, q) for q in queries])
    if opts.head_selection == "causal":
        scores = causal_head_scores(lm, job, corrupted, answers, means)
    else:
        scores = attribution_head_scores(lm, corrupted, answers, means)

    total_heads = lm.arch.num_layers * lm.arch.num_heads
    head_counts = (
        [opts.num_heads]
        if opts.num_heads is not None
        else sorted({max(1, round(total_heads * f)) for f in (0.02, 0.04, 0.08)})
    )
    mode = "add_last" if opts.positions == "last" else "add_from_last"

    def make(k: int) -> TaskVector:
        fv = head_vector(lm, means, top_heads(scores, k))
        return new_vector(job, opts, "function_vector", mode, {"residual": fv.expand(lm.arch.num_layers, -1).clone()})

    vectors = {k: make(k) for k in head_counts}
    dev = DevSet.build(job, split, opts.seed)
    middle_k = head_counts[len(head_counts) // 2]
    job.report(stage="choosing layer")
    layers = [opts.layer] if opts.layer is not None else layer_grid(lm.arch.num_layers)
    by_layer = choose(
        job, dev, [Candidate((SteeringTerm(vectors[middle_k], 1.0, (la,)),), {"layer": la}) for la in layers]
    )
    layer = by_layer.candidate.params["layer"]
    job.report(stage="choosing heads and strength")
    strengths = strength_grid(opts.strength, [0.5, 1.0, 2.0, 4.0])
    by_setting = choose(
        job,
        dev,
        [
            Candidate((SteeringTerm(vectors[k], s, (layer,)),), {"num_heads": k, "strength": s})
            for k in head_counts
            for s in strengths
        ],
    )
    best_k = by_setting.candidate.params["num_heads"]
    vector = vectors[best_k]
    vector.layers = [layer]
    vector.default_strength = by_setting.candidate.params["strength"]
    vector.tensors["head_scores"] = scores.float()
    return finish(
        vector,
        job,
        dev,
        split,
        by_setting,
        num_heads=best_k,
        heads=[list(h) for h in top_heads(scores, best_k)],
        layer_scan=by_layer.table,
        setting_scan=by_setting.table,
    )


SPEC = MethodSpec("function_vector", FunctionVectorOptions, compute, relative_cost=2.0, tried_by_auto=True)
