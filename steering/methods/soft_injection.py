"""Soft Injection of Task Embeddings (SITE; Park & Rhee, 2025, arXiv:2507.20906), extended to the answer's
later tokens.

Task embeddings are every attention head's mean output at the last token of few-shot prompts. One
gate per (layer, head), a = sigmoid(logit), mixes each head's output at the last token of a zero-shot
query: z <- (1 - a) z + a mean. The gates are trained with Adam on the first answer token of the
training demonstrations asked zero-shot, with the model frozen (`answer_tokens: "all"` trains them on the
whole answer, teacher forced, and on the token that ends it; on the default model it did not help, see
docs/RESULTS.md). The best gates on held-out demonstrations are kept (early stopping); the strength is then
chosen by held-out exact match. Head means come from 50 prompts of 10 demonstrations, as in the paper.

The paper injects at the last prompt token only, which sets the answer's first token: after it, nothing
holds the model to the task, and longer answers drift (`frog, frog, frog` for a reversed list). When some
demonstrated answers are longer than one token (`answer_gates`), a second set of head means is read at the
answer tokens of the same few-shot prompts (teacher forced, in the same forward pass), and a second set of
gates, trained on the answer's later tokens and its end with the first set fixed, mixes them in at every token
after the last prompt token (mode `head_mix_answer`). They are kept only when they raise held-out exact match.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from steering.methods.capture import head_means
from steering.methods.common import (
    Candidate,
    Choice,
    DevSet,
    Job,
    MethodOptions,
    MethodSpec,
    Split,
    answer_ids,
    answer_token,
    by_exact_match,
    choose,
    ended_answer_ids,
    few_shot_examples,
    finish,
    new_vector,
    split_demonstrations,
    strength_grid,
)
from steering.methods.gates import Batch, Schedule, Training, query_batches, token_loss, train_gates
from steering.steer.inject import BatchSteering, LayerEdit, SteeringError, SteeringTerm
from steering.vectors.task_vector import TaskVector

# sigmoid(CLOSED) is exactly 0.0 in float32: a layer that was not trained changes nothing even when a
# request names it explicitly.
CLOSED = -200.0
STRENGTHS = (0.5, 0.75, 1.0, 1.25)
ANSWER_SCALES = (0.5, 1.0)  # the answer gates' share tried on held-out exact match (0: not kept)


class SoftInjectionOptions(MethodOptions):
    k_shot: int = Field(10, ge=1, le=64, description="Demonstrations in each prompt the head means are read from.")
    num_prompts: int = Field(50, ge=1, le=512, description="Few-shot prompts the head means are averaged over.")
    answer_tokens: Literal["first", "all"] = Field(
        "first", description="Train on the answer's first token, or on all of it and the token that ends it."
    )
    answer_gates: bool = Field(
        True,
        description=(
            "When some demonstrated answers are longer than one token, also train gates for the answer's later "
            "tokens; they are kept only if held-out exact match improves."
        ),
    )
    steps: int = Field(100, ge=1, le=5000, description="Most optimiser steps on the gates.")
    lr: float = Field(0.2, gt=0.0, le=10.0, description="Adam learning rate of the gate logits.")
    # A step on the answer gates runs the whole answer: fewer, larger steps halve their training time on the
    # default model with held-out exact match as good or better (docs/RESULTS.md).
    answer_steps: int = Field(30, ge=1, le=5000, description="Most optimiser steps on the answer gates.")
    answer_lr: float = Field(0.5, gt=0.0, le=10.0, description="Adam learning rate of the answer gate logits.")
    batch_size: int = Field(32, ge=1, le=1024, description="Training queries per step.")
    eval_every: int = Field(5, ge=1, le=1000, description="Steps between dev-loss evaluations.")
    patience: int = Field(4, ge=1, le=1000, description="Evaluations without a better dev loss before stopping.")
    layers: list[int] | None = Field(None, description="Layers whose heads get gates (default: all).")

    @property
    def schedule(self) -> Schedule:
        return Schedule(self.steps, self.lr, self.eval_every, self.patience)

    @property
    def answer_schedule(self) -> Schedule:
        return Schedule(self.answer_steps, self.answer_lr, self.eval_every, self.patience)


def _check_layers(layers: Sequence[int] | None, num_layers: int) -> list[int]:
    if layers is None:
        return list(range(num_layers))
    chosen = sorted(set(layers))
    if not chosen or any(not 0 <= la < num_layers for la in chosen):
        raise SteeringError(f"soft_injection layers must be a non-empty subset of 0..{num_layers - 1}")
    return chosen


def _mix(gates: Tensor, means: Tensor, rows: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(coef [rows, heads, 1], target [rows, heads, head_dim]) of one layer's head mix."""
    a = gates.to(dtype)
    return a[None, :, None].expand(rows, -1, 1), (a[:, None] * means)[None].expand(rows, -1, -1)


def _steering(
    layers: Sequence[int],
    rows: int,
    dtype: torch.dtype,
    last: tuple[Tensor, Tensor],
    answer: tuple[Tensor, Tensor] | None = None,
) -> BatchSteering:
    """Head-mix edits with gates [len(layers), heads] (differentiable) at the listed layers: `last` = (gates,
    means) at the last prompt token, `answer` the same at every later token."""
    edits = {}
    for i, layer in enumerate(layers):
        edit = LayerEdit()
        edit.head_coef, edit.head_target = _mix(last[0][i], last[1][layer], rows, dtype)
        if answer is not None:
            edit.answer_coef, edit.answer_target = _mix(answer[0][i], answer[1][layer], rows, dtype)
        edits[layer] = edit
    return BatchSteering.from_edits(edits, prompt_len=0)


def _full_logits(trained: Tensor, layers: Sequence[int], num_layers: int) -> Tensor:
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


QuerySplit = tuple[list[Batch], list[Batch]]  # training and held-out batches of zero-shot queries


def _query_split(job: Job, opts: SoftInjectionOptions, split: Split, whole: bool) -> QuerySplit:
    """The queries of both halves of the split, predicting the answer's first token or (`whole`) all of it and
    the token that ends it."""
    lm, template = job.lm, job.template

    def targets(demo) -> list[int]:
        return ended_answer_ids(lm, template, demo) if whole else [answer_token(lm, template, demo)]

    train = query_batches(lm, template, split.train, targets, opts.batch_size, opts.seed)
    dev = query_batches(lm, template, split.dev, targets, max(opts.batch_size, len(split.dev)), opts.seed)
    return train, dev


def _first_token_stage(
    job: Job, opts: SoftInjectionOptions, batches: QuerySplit, means: Tensor, layers: list[int]
) -> Training:
    """The paper's gates: trained at the last prompt token on the answer's first token (or all of it)."""
    lm = job.lm

    def loss(batch: Batch, gates: Tensor, grad: bool) -> tuple[Tensor, int]:
        steering = _steering(layers, batch.runner.rows, lm.dtype, (gates, means))
        return token_loss(batch.runner.logits_all(steering, grad=grad), batch.targets)

    return train_gates(job, *batches, (len(layers), lm.arch.num_heads), loss, opts.schedule)


def _answer_vectors(
    job: Job, opts: SoftInjectionOptions, batches: QuerySplit, answer_means: Tensor, vector: TaskVector
) -> tuple[list[TaskVector], dict[str, Any]]:
    """Gates trained on the answer's later tokens over the head means at the answer tokens, the first gates fixed
    at the chosen strength: one `head_mix_answer` vector per share in `ANSWER_SCALES`."""
    lm, layers = job.lm, list(vector.layers)
    strength = vector.default_strength
    answer_means = answer_means.to(lm.device, lm.dtype)
    first = torch.sigmoid(vector.tensors["gate_logits"][layers]).to(lm.device) * strength
    means = vector.tensors["head_means"].to(lm.device, lm.dtype)

    def loss(batch: Batch, gates: Tensor, grad: bool) -> tuple[Tensor, int]:
        steering = _steering(layers, batch.runner.rows, lm.dtype, (first, means), (gates, answer_means))
        logits = batch.runner.logits_all(steering, grad=grad)
        return token_loss(logits[:, 1:], batch.targets[:, 1:])  # the first token is the first gates' job

    job.report(stage="training answer gates")
    training = train_gates(job, *batches, (len(layers), lm.arch.num_heads), loss, opts.answer_schedule)
    trained = torch.sigmoid(training.best_logits.float().cpu())
    vectors = []
    for share in ANSWER_SCALES:
        # Stored so that the default strength (which scales both gate sets) gives the trained gates x share.
        gates = (trained * share / strength).clamp(max=1.0 - 1e-6)
        tensors = {
            **vector.tensors,
            "answer_head_means": answer_means.float().cpu().contiguous(),
            "answer_gate_logits": _full_logits(torch.logit(gates).clamp(min=CLOSED), layers, lm.arch.num_layers),
        }
        answer = new_vector(job, opts, "soft_injection", "head_mix_answer", tensors, layers, strength)
        vectors.append(answer)
    full = _full_logits(training.best_logits, layers, lm.arch.num_layers)
    return vectors, {"answer_gates": _summary(training, full, layers)}


def _with_answer_gates(
    job: Job,
    opts: SoftInjectionOptions,
    batches: QuerySplit,
    dev: DevSet,
    answer_means: Tensor,
    vector: TaskVector,
    chosen: Choice,
) -> tuple[TaskVector, Choice, dict[str, Any]]:
    """The vector with answer gates when they raise held-out exact match over `chosen`; else `vector` as it is.
    `batches` predict whole answers."""
    vectors, report = _answer_vectors(job, opts, batches, answer_means, vector)
    job.report(stage="choosing answer gates")
    exact = {0.0: chosen.exact}
    for share, candidate in zip(ANSWER_SCALES, vectors, strict=True):
        exact[share] = dev.exact(job, dev.zero_shot, [SteeringTerm(candidate, candidate.default_strength)])
    best = max(exact, key=lambda share: (exact[share], -share))  # ties: the fewer changes
    report["answer_gates"].update(exact_by_share={f"{k:g}": v for k, v in exact.items()}, share=best)
    # Flat copies for summaries that keep only scalar metrics (`steer eval`'s tables, the verdict's numbers).
    report.update(answer_gates_share=best, answer_gates_seconds=report["answer_gates"]["train_seconds"])
    if best == 0.0:
        return vector, chosen, report
    kept = vectors[ANSWER_SCALES.index(best)]
    return kept, Choice(chosen.candidate, chosen.accuracy, chosen.logprob, chosen.table, exact[best]), report


def compute(job: Job, options: dict) -> TaskVector:
    opts = SoftInjectionOptions(**options)
    lm, arch = job.lm, job.lm.arch
    layers = _check_layers(opts.layers, arch.num_layers)
    split = split_demonstrations(job.demonstrations, opts.dev_fraction, opts.seed)
    job.report(stage="reading activations")
    prompts, queries = few_shot_examples(job, split.train, opts)
    answer_stage = opts.answer_gates and any(len(answer_ids(lm, job.template, d)) > 1 for d in split.train)
    # The answer gates' means come from the answers after the same prompts, read in the same pass.
    read = head_means(lm, prompts, [answer_ids(lm, job.template, q) for q in queries] if answer_stage else None)
    means = read.last.to(lm.device, lm.dtype)  # [layers, heads, head_dim]
    job.check()
    job.report(stage="caching queries")
    whole = opts.answer_tokens == "all"
    batches = _query_split(job, opts, split, whole)
    training = _first_token_stage(job, opts, batches, means, layers)
    gate_logits = _full_logits(training.best_logits, layers, arch.num_layers)
    tensors = {"head_means": means.float().cpu().contiguous(), "gate_logits": gate_logits}
    vector = new_vector(job, opts, "soft_injection", "head_mix_last", tensors, layers)
    dev = DevSet.build(job, split, opts.seed)
    job.report(stage="choosing strength")
    strengths = strength_grid(opts.strength, STRENGTHS)
    candidates = [Candidate((SteeringTerm(vector, s),), {"strength": s}) for s in strengths]
    # A strength that starts answers right but runs them on is not the best one: rank by exact match.
    chosen = by_exact_match(job, dev, candidates, choose(job, dev, candidates))
    vector.default_strength = chosen.candidate.params["strength"]
    extra: dict[str, Any] = {}
    if read.answer is not None:
        answer_batches = batches if whole else _query_split(job, opts, split, whole=True)  # the same when whole
        vector, chosen, extra = _with_answer_gates(job, opts, answer_batches, dev, read.answer, vector, chosen)
    return finish(
        vector, job, dev, split, chosen, strength_scan=chosen.table, **_summary(training, gate_logits, layers), **extra
    )


SPEC = MethodSpec("soft_injection", SoftInjectionOptions, compute, relative_cost=6.0, tried_by_auto=True)
