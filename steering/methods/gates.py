"""Training per-head gates with the model frozen: cached zero-shot batches, Adam on the gate logits, and the
best gates on held-out demonstrations kept (early stopping). Soft injection trains its gates here.

A batch runs only the last prompt token (and, teacher forced, the answer after it) with gradients: the
prompt prefix is computed once per batch and kept in a KV cache (`steering.methods.capture.LastTokenRunner`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from steering.methods.capture import LastTokenRunner
from steering.methods.common import Job
from steering.model.loading import LoadedModel
from steering.tasks.templates import render_query
from steering.wire.protocol import Demonstration, Template

REPORT_EVERY = 5
MIN_DELTA = 0.01  # a dev-loss gain (nats) below this still updates the best gates but counts as stale
IGNORE = -100  # cross-entropy's ignore_index: padding after a shorter answer


@dataclass
class Batch:
    """A fixed group of zero-shot queries: its prefix cached once, and the tokens to predict."""

    runner: LastTokenRunner
    targets: Tensor  # [rows, positions]: the answer (and its end) from the last prompt token on; IGNORE pads


@dataclass(frozen=True)
class Schedule:
    """How long and how fast the gates are trained."""

    steps: int
    lr: float
    eval_every: int
    patience: int


@dataclass
class Training:
    """What the optimisation found: the best gate logits and how it got there."""

    best_logits: Tensor
    best_step: int
    best_dev_loss: float
    steps_run: int
    first_loss: float
    seconds: float
    curve: list[dict[str, float]] = field(default_factory=list)


# The loss of one batch under gates a = sigmoid(logits) (differentiable when `grad`), and how many target
# tokens it averages over.
GateLoss = Callable[[Batch, Tensor, bool], tuple[Tensor, int]]


def query_batches(
    lm: LoadedModel,
    template: Template,
    demos: Sequence[Demonstration],
    targets: Callable[[Demonstration], list[int]],
    size: int,
    seed: int,
) -> list[Batch]:
    """Near-equal fixed minibatches of the zero-shot queries (deterministic order); each row predicts
    `targets(demo)` from its last prompt token on, the tokens before the last teacher forced."""
    order = list(demos)
    random.Random(seed + 2).shuffle(order)
    count = -(-len(order) // size)
    batches = []
    for group in (order[i::count] for i in range(count)):
        wanted = [targets(d) for d in group]
        width = max(len(t) for t in wanted)
        runner = LastTokenRunner(
            lm, [render_query(template, d.input) for d in group], continuations=[t[:-1] for t in wanted]
        )
        padded = [t + [IGNORE] * (width - len(t)) for t in wanted]
        batches.append(Batch(runner=runner, targets=torch.tensor(padded, device=lm.device)))
    return batches


def token_loss(logits: Tensor, targets: Tensor) -> tuple[Tensor, int]:
    """Mean cross-entropy over the non-padding targets, and their count."""
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
    return loss, int((targets != IGNORE).sum())


def _dev_loss(dev: Sequence[Batch], logits: Tensor, loss: GateLoss) -> float:
    parts = [loss(b, torch.sigmoid(logits), False) for b in dev]
    return sum(value.item() * n for value, n in parts) / max(sum(n for _, n in parts), 1)


def train_gates(
    job: Job, train: Sequence[Batch], dev: Sequence[Batch], shape: tuple[int, ...], loss: GateLoss, plan: Schedule
) -> Training:
    """Adam on gate logits of `shape` (all 0 at first: every gate half open); every `eval_every` steps the dev
    loss decides the best gates so far, and `patience` evaluations without a real gain stop the training."""
    lm = job.lm
    started = time.perf_counter()
    logits = torch.zeros(shape, device=lm.device, requires_grad=True)
    optimiser = torch.optim.Adam([logits], lr=plan.lr)
    best_loss = _dev_loss(dev, logits.detach(), loss)
    best = Training(logits.detach().clone(), 0, best_loss, 0, float("nan"), 0.0)
    best.curve.append({"step": 0, "dev_loss": best_loss})
    stale, recent = 0, 0.0
    for step in range(1, plan.steps + 1):
        job.check()
        with lm.lock:  # forward and backward in one slice: a backward beside a generation step slows both
            value_t, _ = loss(train[(step - 1) % len(train)], torch.sigmoid(logits), True)
            optimiser.zero_grad(set_to_none=True)
            value_t.backward()
            optimiser.step()
        value = value_t.item()
        best.steps_run = step
        if step == 1:
            best.first_loss = value
        recent = value if step == 1 else 0.8 * recent + 0.2 * value
        if step % plan.eval_every == 0 or step == plan.steps:
            dev_loss = _dev_loss(dev, logits.detach(), loss)
            best.curve.append({"step": step, "loss": round(recent, 4), "dev_loss": round(dev_loss, 4)})
            job.report(stage="training", step=step, steps=plan.steps, loss=recent, dev_loss=dev_loss)
            stale = 0 if dev_loss < best.best_dev_loss - MIN_DELTA else stale + 1
            if dev_loss < best.best_dev_loss:
                best.best_logits, best.best_step, best.best_dev_loss = logits.detach().clone(), step, dev_loss
            if stale >= plan.patience:
                break
        elif step % REPORT_EVERY == 0:
            job.report(stage="training", step=step, steps=plan.steps, loss=recent)
    best.seconds = time.perf_counter() - started
    return best
