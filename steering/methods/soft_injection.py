"""Soft Injection of Task Embeddings (SITE, 2025).

Task embeddings are every attention head's mean output at the last token of few-shot prompts. One
gate per (layer, head), a = sigmoid(logit), mixes each head's output at the last token of a zero-shot
query: z <- (1 - a) z + a mean. The gates are trained with Adam on the first answer token of the
training demonstrations asked zero-shot, with the model frozen (`answer_tokens: "all"` trains on the
whole answer, teacher forced, and on the token that ends it: on the default model it moved held-out
exact match by at most one item in ten on two tasks and took four to seven times as long; see
docs/RESULTS.md). The best gates on held-out
demonstrations are kept (early stopping); the strength is then chosen by held-out exact match. Only
the last prompt token (and the answer) run with gradients: the prompt prefix is computed once per
minibatch and kept in a KV cache. Head means come from 50 prompts of 10 demonstrations, as in the paper.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from steering.capture import LastTokenRunner, last_token_activations
from steering.inject import BatchSteering, LayerEdit, SteeringError, SteeringTerm
from steering.methods.common import (
    Candidate,
    DevSet,
    Job,
    MethodOptions,
    answer_token,
    by_exact_match,
    choose,
    ended_answer_ids,
    few_shot_prompts,
    finish,
    new_vector,
    split_demonstrations,
    strength_grid,
)
from steering.model import LoadedModel
from steering.protocol import Demonstration, Template
from steering.templates import render_query
from steering.vectors import TaskVector

# sigmoid(CLOSED) is exactly 0.0 in float32: a layer that was not trained changes nothing even when a
# request names it explicitly.
CLOSED = -200.0
STRENGTHS = (0.5, 0.75, 1.0, 1.25)
REPORT_EVERY = 5
MIN_DELTA = 0.01  # a dev-loss gain (nats) below this still updates the best gates but counts as stale
IGNORE = -100  # cross-entropy's ignore_index: padding after a shorter answer


class SoftInjectionOptions(MethodOptions):
    k_shot: int = Field(10, ge=1, le=64, description="Demonstrations in each prompt the head means are read from.")
    num_prompts: int = Field(50, ge=1, le=512, description="Few-shot prompts the head means are averaged over.")
    answer_tokens: Literal["first", "all"] = Field(
        "first", description="Train on the answer's first token, or on all of it and the token that ends it."
    )
    steps: int = Field(100, ge=1, le=5000, description="Most optimiser steps on the gates.")
    lr: float = Field(0.2, gt=0.0, le=10.0, description="Adam learning rate of the gate logits.")
    batch_size: int = Field(32, ge=1, le=1024, description="Training queries per step.")
    eval_every: int = Field(5, ge=1, le=1000, description="Steps between dev-loss evaluations.")
    patience: int = Field(4, ge=1, le=1000, description="Evaluations without a better dev loss before stopping.")
    layers: list[int] | None = Field(None, description="Layers whose heads get gates (default: all).")


OPTIONS = SoftInjectionOptions


@dataclass
class Batch:
    """A fixed group of zero-shot queries: its prefix cached once, and the tokens to predict."""

    runner: LastTokenRunner
    targets: Tensor  # [rows, positions]: the answer (and its end) from the last prompt token on; IGNORE pads


@dataclass
class Training:
    """What the optimisation found: the best gate logits and how it got there."""

    best_logits: Tensor  # [len(layers), heads]
    best_step: int
    best_dev_loss: float
    steps_run: int
    first_loss: float
    seconds: float
    curve: list[dict[str, float]] = field(default_factory=list)


def _check_layers(layers: Sequence[int] | None, num_layers: int) -> list[int]:
    if layers is None:
        return list(range(num_layers))
    chosen = sorted(set(layers))
    if not chosen or any(not 0 <= la < num_layers for la in chosen):
        raise SteeringError(f"soft_injection layers must be a non-empty subset of 0..{num_layers - 1}")
    return chosen


def _targets(lm: LoadedModel, template: Template, demo: Demonstration, whole: bool) -> list[int]:
    return ended_answer_ids(lm, template, demo) if whole else [answer_token(lm, template, demo)]


def _batches(
    lm: LoadedModel, template: Template, demos: Sequence[Demonstration], size: int, seed: int, whole: bool
) -> list[Batch]:
    """Near-equal fixed minibatches of the zero-shot queries (deterministic order)."""
    order = list(demos)
    random.Random(seed + 2).shuffle(order)
    count = -(-len(order) // size)
    batches = []
    for group in (order[i::count] for i in range(count)):
        targets = [_targets(lm, template, d, whole) for d in group]
        width = max(len(t) for t in targets)
        runner = LastTokenRunner(
            lm, [render_query(template, d.input) for d in group], continuations=[t[:-1] for t in targets]
        )
        padded = [t + [IGNORE] * (width - len(t)) for t in targets]
        batches.append(Batch(runner=runner, targets=torch.tensor(padded, device=lm.device)))
    return batches


def _steering(gates: Tensor, means: Tensor, layers: Sequence[int], rows: int, dtype: torch.dtype) -> BatchSteering:
    """Head-mix edits with gates a [len(layers), heads] (differentiable) at the listed layers."""
    edits = {}
    for i, layer in enumerate(layers):
        a = gates[i].to(dtype)
        coef = a[None, :, None].expand(rows, -1, 1)
        target = (a[:, None] * means[layer])[None].expand(rows, -1, -1)
        edits[layer] = LayerEdit(head_coef=coef, head_target=target)
    return BatchSteering.from_edits(edits, prompt_len=0)


def _loss(lm: LoadedModel, batch: Batch, gates: Tensor, means: Tensor, layers: Sequence[int], grad: bool) -> Tensor:
    steering = _steering(gates, means, layers, batch.runner.rows, lm.dtype)
    logits = batch.runner.logits_all(steering, grad=grad)
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE)


def _dev_loss(lm: LoadedModel, batches: Sequence[Batch], gates: Tensor, means: Tensor, layers: Sequence[int]) -> float:
    weights = [int((b.targets != IGNORE).sum()) for b in batches]
    total = sum(
        _loss(lm, b, gates, means, layers, grad=False).item() * w for b, w in zip(batches, weights, strict=True)
    )
    return total / sum(weights)


def train_gates(
    job: Job, train: list[Batch], dev: list[Batch], means: Tensor, layers: list[int], opts: SoftInjectionOptions
) -> Training:
    """Adam on the gate logits; every `eval_every` steps the dev loss decides the best gates so far."""
    lm = job.lm
    started = time.perf_counter()
    logits = torch.zeros(len(layers), lm.arch.num_heads, device=lm.device, requires_grad=True)
    optimiser = torch.optim.Adam([logits], lr=opts.lr)
    best_loss = _dev_loss(lm, dev, torch.sigmoid(logits.detach()), means, layers)
    best = Training(logits.detach().clone(), 0, best_loss, 0, float("nan"), 0.0)
    best.curve.append({"step": 0, "dev_loss": best_loss})
    stale, recent = 0, 0.0
    for step in range(1, opts.steps + 1):
        job.check()
        with lm.lock:  # forward and backward in one slice: a backward beside a generation step slows both
            loss = _loss(lm, train[(step - 1) % len(train)], torch.sigmoid(logits), means, layers, grad=True)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        value = loss.item()
        best.steps_run = step
        if step == 1:
            best.first_loss = value
        recent = value if step == 1 else 0.8 * recent + 0.2 * value
        if step % opts.eval_every == 0 or step == opts.steps:
            dev_loss = _dev_loss(lm, dev, torch.sigmoid(logits.detach()), means, layers)
            best.curve.append({"step": step, "loss": round(recent, 4), "dev_loss": round(dev_loss, 4)})
            job.report(stage="training", step=step, steps=opts.steps, loss=recent, dev_loss=dev_loss)
            stale = 0 if dev_loss < best.best_dev_loss - MIN_DELTA else stale + 1
            if dev_loss < best.best_dev_loss:
                best.best_logits, best.best_step, best.best_dev_loss = logits.detach().clone(), step, dev_loss
            if stale >= opts.patience:
                break
        elif step % REPORT_EVERY == 0:
            job.report(stage="training", step=step, steps=opts.steps, loss=recent)
    best.seconds = time.perf_counter() - started
    return best


def _gate_logits(trained: Tensor, layers: Sequence[int], num_layers: int) -> Tensor:
    full = torch.full((num_layers, trained.shape[1]), CLOSED, dtype=torch.float32)
    full[list(layers)] = trained.float().cpu()
    return full


def _summary(training: Training, gate_logits: Tensor, layers: Sequence[int]) -> dict[str, Any]:
    gates = torch.sigmoid(gate_logits[list(layers)])
    return {
        "train_steps": training.steps_run,
        "best_step": training.best_step,
        "train_seconds": round(training.seconds, 3),
        "first_train_loss": training.first_loss,
        "best_dev_loss": training.best_dev_loss,
        "gates_open": int((gates > 0.9).sum()),
        "gates_closed": int((gates < 0.1).sum()),
        "curve": training.curve,
    }


def compute(job: Job, options: dict) -> TaskVector:
    opts = SoftInjectionOptions(**options)
    lm, arch = job.lm, job.lm.arch
    layers = _check_layers(opts.layers, arch.num_layers)
    split = split_demonstrations(job.demonstrations, opts.dev_fraction, opts.seed)
    job.report(stage="reading activations")
    heads = last_token_activations(lm, few_shot_prompts(job, split.train, opts), heads=True)["heads"]
    means = heads.mean(0).to(lm.device, lm.dtype)  # [layers, heads, head_dim]
    job.check()
    job.report(stage="caching queries")
    whole = opts.answer_tokens == "all"
    train = _batches(lm, job.template, split.train, opts.batch_size, opts.seed, whole)
    dev_batches = _batches(lm, job.template, split.dev, max(opts.batch_size, len(split.dev)), opts.seed, whole)
    training = train_gates(job, train, dev_batches, means, layers, opts)
    gate_logits = _gate_logits(training.best_logits, layers, arch.num_layers)
    tensors = {"head_means": means.float().cpu().contiguous(), "gate_logits": gate_logits}
    vector = new_vector(job, opts, "soft_injection", "head_mix_last", tensors, layers)
    dev = DevSet.build(job, split, opts.seed)
    job.report(stage="choosing strength")
    strengths = strength_grid(opts.strength, STRENGTHS)
    candidates = [Candidate((SteeringTerm(vector, s),), {"strength": s}) for s in strengths]
    # A strength that starts answers right but runs them on is not the best one: rank by exact match.
    by_strength = by_exact_match(job, dev, candidates, choose(job, dev, candidates))
    vector.default_strength = by_strength.candidate.params["strength"]
    return finish(
        vector, job, dev, split, by_strength, strength_scan=by_strength.table, **_summary(training, gate_logits, layers)
    )
