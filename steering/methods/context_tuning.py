"""Context tuning (CT-KV; Lu et al., 2025, arXiv:2507.04221): a few-shot prompt's keys and values, trained.

The prefix starts as the KV cache of `k_shot` training demonstrations rendered as a few-shot prompt, so before
any training it answers as that prompt does. Its keys and values (every layer's, the model frozen) are then
trained with AdamW on the training demonstrations asked zero-shot after it, teacher forced on the whole answer
and the token that ends it. As in the paper, a demonstration that is in the prefix is masked out of it while it
is the one being predicted (leave-one-out), and each prefix column is dropped with probability `token_dropout`
per row and step, so the prefix cannot just copy its own answers. The best prefix on held-out demonstrations is
kept (early stopping on their loss). The vector is the prefix (mode `kv_prefix`); the transformers engine places
it in a row's cache ahead of its prompt (`steering.steer.prefix`). Requests render their prompt whole, so a
template's `prefix` (a chat template's system turn) is in both; training sees it that way too.

What it costs: the prefix is attended to at every step, like the few-shot prompt it came from (tens of kB per
prefix token, stored with the task), but it is never prefilled; and it trains for tens of seconds on a CPU
(docs/RESULTS.md). Unlike the activation methods it carries what the demonstrations' tokens carry, which is what
answers the model must know (names) need: on the default model it beat 10-shot prompting on knowledge lookups
where every activation method trailed it (docs/RESULTS.md, issue 22 round 5).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor
from transformers import DynamicCache

from steering.generation.transformers.tokens import ModelTokens
from steering.methods.common import (
    Candidate,
    Choice,
    DevSet,
    Job,
    MethodOptions,
    MethodSpec,
    ended_answer_ids,
    exact_match,
    finish,
    greedy_answers,
    new_vector,
    split_demonstrations,
)
from steering.model.loading import LoadedModel
from steering.steer.inject import SteeringTerm
from steering.tasks.templates import render_example, render_query
from steering.vectors.modes import MAX_PREFIX_TOKENS
from steering.vectors.task_vector import TaskVector
from steering.wire.protocol import Demonstration, Template

IGNORE = -100  # cross-entropy's ignore_index: the query's tokens and padding


class ContextTuningOptions(MethodOptions):
    k_shot: int = Field(10, ge=1, le=64, description="Demonstrations in the prefix (its first value is their prompt).")
    epochs: int = Field(16, ge=1, le=200, description="Most passes over the training demonstrations.")
    patience: int = Field(4, ge=1, le=200, description="Epochs without a lower held-out loss before training stops.")
    lr: float = Field(3e-3, gt=0.0, le=1.0, description="AdamW learning rate of the prefix's keys and values.")
    batch_size: int = Field(8, ge=1, le=256, description="Training demonstrations per step.")
    token_dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Chance that a prefix column is hidden per row.")

    @model_validator(mode="after")
    def _every_layer(self) -> ContextTuningOptions:
        if self.layer is not None:
            raise ValueError("context_tuning trains every layer's keys and values: it takes no `layer`")
        return self


@dataclass
class Prefix:
    """The prefix being trained: per layer [1, kv_heads, tokens, head_dim] keys and values."""

    keys: list[Tensor]
    values: list[Tensor]
    spans: list[tuple[int, int]]  # the columns of each prefix demonstration, in `shots` order
    shots: list[Demonstration]

    @property
    def tokens(self) -> int:
        return int(self.keys[0].shape[2])

    def copy(self) -> tuple[list[Tensor], list[Tensor]]:
        return [k.detach().clone() for k in self.keys], [v.detach().clone() for v in self.values]

    def tensors(self) -> dict[str, Tensor]:
        """The prefix as a `kv_prefix` vector holds it: [layers, kv_heads, tokens, head_dim] keys and values."""
        return {
            "prefix_keys": torch.cat(self.keys).detach().cpu().contiguous(),
            "prefix_values": torch.cat(self.values).detach().cpu().contiguous(),
        }


@dataclass
class Rows:
    """Queries with their answers, right-padded: what a batch predicts after the prefix."""

    ids: Tensor  # [rows, width]
    mask: Tensor  # [rows, width]
    labels: Tensor  # [rows, width]: the next token at each position, IGNORE where nothing is predicted
    left_out: list[int | None]  # the prefix demonstration each row is, if any (hidden from that row)


@dataclass
class Training:
    best_epoch: int
    best_dev_loss: float
    epochs_run: int
    first_dev_loss: float
    seconds: float
    curve: list[dict[str, float]] = field(default_factory=list)


def _encode(lm: LoadedModel, text: str) -> list[int]:
    return [int(t) for t in lm.tokenizer(text, add_special_tokens=False)["input_ids"]]


def build_prefix(lm: LoadedModel, template: Template, shots: list[Demonstration]) -> Prefix:
    """The KV cache of `shots` as a few-shot prompt (each followed by the separator), and each one's columns."""
    ids = [int(t) for t in lm.tokenizer("")["input_ids"]] + _encode(lm, template.prefix)  # the tokenizer's lead
    spans = []
    for demo in shots:
        piece = _encode(lm, render_example(template, demo) + template.separator)
        spans.append((len(ids), len(ids) + len(piece)))
        ids += piece
    limit = min(MAX_PREFIX_TOKENS, lm.context_window or MAX_PREFIX_TOKENS)
    if len(ids) > limit:
        raise ValueError(f"the prefix takes {len(ids)} tokens; at most {limit} here (lower k_shot)")
    cache = DynamicCache()  # without the config, sliding-window layers keep every column too
    with lm.lock, torch.no_grad():
        lm.model(torch.tensor([ids], device=lm.device), **lm.arch.cache_argument(cache), use_cache=True)
    arch = lm.arch
    want = (1, arch.num_kv_heads, len(ids), arch.head_dim)
    layers = list(cache.layers)
    if len(layers) != arch.num_layers or any(tuple(layer.keys.shape) != want for layer in layers):
        raise ValueError("context_tuning needs a cache of [kv_heads, tokens, head_dim] keys at every layer")
    keys = [layer.keys.detach().float().clone().requires_grad_(True) for layer in layers]
    values = [layer.values.detach().float().clone().requires_grad_(True) for layer in layers]
    return Prefix(keys, values, spans, list(shots))


def build_rows(lm: LoadedModel, template: Template, demos: list[Demonstration], prefix: Prefix) -> Rows:
    """Each demonstration's query as the engine encodes it, then its answer and the token that ends it."""
    tokens = ModelTokens(lm)
    index = {id(d): i for i, d in enumerate(prefix.shots)}
    sequences, targets = [], []
    for demo in demos:
        query = tokens.encode(render_query(template, demo.input))
        answer = ended_answer_ids(lm, template, demo)
        sequences.append(query + answer)
        targets.append([IGNORE] * (len(query) - 1) + answer + [IGNORE])
    width = max(len(s) for s in sequences)
    pad = tokens.pad_id
    return Rows(
        ids=torch.tensor([s + [pad] * (width - len(s)) for s in sequences], device=lm.device),
        mask=torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences], device=lm.device),
        labels=torch.tensor([t + [IGNORE] * (width - len(t)) for t in targets], device=lm.device),
        left_out=[index.get(id(d)) for d in demos],
    )


def _subset(rows: Rows, picked: list[int]) -> Rows:
    index = torch.tensor(picked, device=rows.ids.device)
    width = int(rows.mask.index_select(0, index).sum(-1).max())
    return Rows(
        rows.ids.index_select(0, index)[:, :width],
        rows.mask.index_select(0, index)[:, :width],
        rows.labels.index_select(0, index)[:, :width],
        [rows.left_out[i] for i in picked],
    )


def prefix_logits(
    lm: LoadedModel, keys: list[Tensor], values: list[Tensor], prefix: Prefix, rows: Rows, dropout: float = 0.0
) -> Tensor:
    """The model's logits [rows, width, vocab] over `rows` read after the prefix (differentiable in it)."""
    count = rows.ids.shape[0]
    seen = torch.ones(count, prefix.tokens, device=lm.device)
    for row, left_out in enumerate(rows.left_out):
        if left_out is not None:
            start, end = prefix.spans[left_out]
            seen[row, start:end] = 0
    if dropout > 0:
        seen = seen * (torch.rand_like(seen) >= dropout)
    cache = DynamicCache(config=lm.model.config)
    for layer, (k, v) in enumerate(zip(keys, values, strict=True)):
        cache.update(k.to(lm.dtype).expand(count, -1, -1, -1), v.to(lm.dtype).expand(count, -1, -1, -1), layer)
    width = rows.ids.shape[1]
    return lm.model(
        input_ids=rows.ids,
        attention_mask=torch.cat([seen.to(rows.mask.dtype), rows.mask], dim=1),
        position_ids=(prefix.tokens + torch.arange(width, device=lm.device)).expand(count, -1),
        **lm.arch.cache_argument(cache),
        use_cache=True,
    ).logits


def _loss(logits: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE)


def dev_loss(lm: LoadedModel, keys: list[Tensor], values: list[Tensor], prefix: Prefix, rows: Rows) -> float:
    with lm.lock, torch.no_grad():
        return float(_loss(prefix_logits(lm, keys, values, prefix, rows), rows.labels))


def train_prefix(job: Job, opts: ContextTuningOptions, prefix: Prefix, train: Rows, dev: Rows) -> Training:
    """AdamW on the prefix; the best keys and values on the dev rows are left in `prefix`."""
    lm, started = job.lm, time.perf_counter()
    optimiser = torch.optim.AdamW([*prefix.keys, *prefix.values], lr=opts.lr, weight_decay=0.0)
    rng = random.Random(opts.seed)
    isolated_rng = torch.random.fork_rng(devices=[])  # dropout draws from its own seeded generator
    first = best_loss = dev_loss(lm, prefix.keys, prefix.values, prefix, dev)
    best, best_epoch, stale, epoch = prefix.copy(), 0, 0, 0
    curve = [{"epoch": 0, "dev_loss": first}]
    with isolated_rng:
        torch.manual_seed(opts.seed)
        for epoch in range(1, opts.epochs + 1):
            order = list(range(train.ids.shape[0]))
            rng.shuffle(order)
            for start in range(0, len(order), opts.batch_size):
                job.check()
                batch = _subset(train, order[start : start + opts.batch_size])
                with lm.lock:  # forward and backward in one slice
                    logits = prefix_logits(lm, prefix.keys, prefix.values, prefix, batch, opts.token_dropout)
                    loss = _loss(logits, batch.labels)
                    optimiser.zero_grad()
                    loss.backward()
                optimiser.step()
            current = dev_loss(lm, prefix.keys, prefix.values, prefix, dev)
            curve.append({"epoch": epoch, "dev_loss": current, "train_loss": loss.item()})
            job.report(stage="training the prefix", step=epoch, steps=opts.epochs, dev_loss=round(current, 4))
            if current < best_loss:
                best, best_loss, best_epoch, stale = prefix.copy(), current, epoch, 0
            else:
                stale += 1
                if stale >= opts.patience:
                    break
    prefix.keys, prefix.values = best
    return Training(best_epoch, best_loss, epoch, first, time.perf_counter() - started, curve)


def first_token_logprobs(lm: LoadedModel, prefix: Prefix, rows: Rows) -> Tensor:
    """[rows, vocab] log-probabilities of each query's next token after the trained prefix (a row that is one of
    the prefix's demonstrations does not see that demonstration, as in training)."""
    with lm.lock, torch.no_grad():
        logits = prefix_logits(lm, prefix.keys, prefix.values, prefix, rows)
    last = (rows.labels != IGNORE).int().argmax(dim=1)  # the query's last token predicts the first label
    picked = logits[torch.arange(logits.shape[0]), last]
    return torch.log_softmax(picked.float(), dim=-1).cpu()


def _without_columns(vector: TaskVector, span: tuple[int, int]) -> TaskVector:
    start, end = span
    return replace(
        vector, tensors={n: torch.cat([t[:, :, :start], t[:, :, end:]], dim=2) for n, t in vector.tensors.items()}
    )


def dev_exact(job: Job, dev: DevSet, prefix: Prefix, rows: Rows, vector: TaskVector, strength: float) -> float:
    """Greedy exact match on the dev queries after the trained prefix. Without held-out demonstrations the queries
    are the prefix's own: each is answered without its demonstration's columns (as in training), not copied."""
    groups: dict[int | None, list[int]] = {}
    for row, left_out in enumerate(rows.left_out):
        groups.setdefault(left_out, []).append(row)
    texts: dict[int, str] = {}
    for left_out, members in groups.items():
        own = vector if left_out is None else _without_columns(vector, prefix.spans[left_out])
        prompts = [dev.zero_shot[i] for i in members]
        answers = greedy_answers(job.lm, prompts, (SteeringTerm(own, strength),), dev.answer_end, check=job.check)
        texts.update(zip(members, answers, strict=True))
    return exact_match([texts[i] for i in range(len(rows.left_out))], dev.outputs)


def compute(job: Job, options: dict) -> TaskVector:
    opts = ContextTuningOptions(**options)
    lm, template = job.lm, job.template
    split = split_demonstrations(job.demonstrations, opts.dev_fraction, opts.seed)
    job.report(stage="caching the prefix")
    prefix = build_prefix(lm, template, split.train[: opts.k_shot])
    train_rows = build_rows(lm, template, split.train, prefix)
    # Without held-out demonstrations the dev rows are the training rows, each kept out of its own span.
    dev_rows = build_rows(lm, template, split.dev, prefix) if split.held_out else train_rows
    window, width = lm.context_window, max(train_rows.ids.shape[1], dev_rows.ids.shape[1])
    if window is not None and prefix.tokens + width > window:
        raise ValueError(
            f"the {prefix.tokens}-token prefix and {width}-token demonstrations pass the model's context of "
            f"{window} tokens (lower k_shot or shorten the demonstrations)"
        )
    training = train_prefix(job, opts, prefix, train_rows, dev_rows)
    tensors = prefix.tensors()
    strength = opts.strength if opts.strength is not None else 1.0
    vector = new_vector(job, opts, "context_tuning", "kv_prefix", tensors, range(lm.arch.num_layers), strength)
    dev = DevSet.build(job, split, opts.seed)
    job.report(stage="scoring held-out answers")
    accuracy, logprob = dev.score(first_token_logprobs(lm, prefix, dev_rows))
    terms = (SteeringTerm(vector, strength),)
    exact = dev_exact(job, dev, prefix, dev_rows, vector, strength)
    row: dict[str, Any] = {"strength": strength, "accuracy": accuracy, "logprob": logprob, "exact": exact}
    choice = Choice(Candidate(terms, {"strength": strength}), accuracy, logprob, [row], exact)
    return finish(
        vector,
        job,
        dev,
        split,
        choice,
        prefix_tokens=prefix.tokens,
        prefix_shots=len(prefix.shots),
        best_epoch=training.best_epoch,
        epochs_run=training.epochs_run,
        first_dev_loss=training.first_dev_loss,
        best_dev_loss=training.best_dev_loss,
        train_seconds=round(training.seconds, 3),
        training_curve=training.curve,
    )


SPEC = MethodSpec("context_tuning", ContextTuningOptions, compute, relative_cost=3.0, tried_by_auto=True)
