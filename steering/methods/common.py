"""What every method shares: options, the train/dev split, answer tokens and choosing on held-out data."""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from steering.generation.rows import GenerationRequest
from steering.generation.transformers.engine import Engine
from steering.methods.capture import next_token_logprobs
from steering.methods.prompt_length import check_prompt_lengths
from steering.model.loading import LoadedModel
from steering.steer.inject import SteeringTerm
from steering.tasks.answer_end import AnswerEnd, learn_answer_end
from steering.tasks.templates import answer_text, render_query, sample_few_shot_prompts
from steering.vectors.task_vector import TaskVector
from steering.wire.protocol import Demonstration, Template

ProgressFn = Callable[[dict[str, Any]], None]
DEFAULT_ANSWER_TOKENS = 16  # generated for a dev answer when the rule sets no bound
BASELINE_SHOTS = 10  # demonstrations in the few-shot prompts that steering is compared with


class Cancelled(Exception):
    """The computation was stopped from outside (its task was deleted)."""


class MethodOptions(BaseModel):
    """Options every method takes; each method extends them. Unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    k_shot: int = Field(5, ge=1, le=64, description="Demonstrations in each few-shot prompt.")
    num_prompts: int = Field(24, ge=1, le=512, description="Few-shot prompts averaged into the vector.")
    dev_fraction: float = Field(0.25, ge=0.0, le=0.9, description="Demonstrations held out to choose settings.")
    seed: int = 0
    layer: int | None = Field(None, description="Fix the layer instead of choosing it on held-out data.")
    strength: float | None = Field(None, description="Fix the default strength instead of choosing it.")


@dataclass
class Job:
    """The inputs of one computation and its channels to the outside."""

    lm: LoadedModel
    demonstrations: list[Demonstration]
    template: Template
    progress: ProgressFn = lambda info: None
    should_stop: Callable[[], bool] = lambda: False
    started: float = field(default_factory=time.perf_counter)
    # Seconds the caller lets the whole computation run before stopping it (the server's compute timeout);
    # `auto` starts no candidate it expects to end past a share of it. None: the server's default.
    time_limit_s: float | None = None
    # Results that depend only on the demonstrations, the template and the split, not on the method: `auto`
    # hands its memo to every candidate, so their shared baselines are measured once.
    memo: dict[tuple[Any, ...], Any] = field(default_factory=dict)

    def check(self) -> None:
        if self.should_stop():
            raise Cancelled("computation cancelled")

    def report(self, **info: Any) -> None:
        self.progress(info)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


@dataclass(frozen=True)
class MethodSpec:
    """A method as its module declares it (a module-level `SPEC`, found by `registry.py`): its name, options
    model, computation and how it is chosen."""

    name: str  # as `steering.wire.method_names` lists it
    options: type[MethodOptions]  # validates the method's options
    compute: Callable[[Job, dict], TaskVector]
    # Expected cost relative to a task vector's; `auto` uses it to skip candidates that would overrun its budget.
    relative_cost: float = 1.0
    tried_by_auto: bool = False  # among `auto`'s default candidates (in registry order)
    style: bool = False  # steers style and tone rather than an input-to-output mapping


@dataclass
class Split:
    train: list[Demonstration]
    dev: list[Demonstration]
    held_out: bool  # False when there were too few demonstrations to hold any out


def split_demonstrations(demos: Sequence[Demonstration], dev_fraction: float, seed: int) -> Split:
    shuffled = list(demos)
    random.Random(seed).shuffle(shuffled)
    n_dev = round(len(shuffled) * dev_fraction)
    if n_dev < 2 or len(shuffled) - n_dev < 2:
        return Split(train=shuffled, dev=shuffled, held_out=False)
    return Split(train=shuffled[n_dev:], dev=shuffled[:n_dev], held_out=True)


def answer_ids(lm: LoadedModel, template: Template, demo: Demonstration) -> list[int]:
    """The answer's tokens as the model would write them after the rendered query (at least one)."""
    query_ids = lm.tokenizer(render_query(template, demo.input))["input_ids"]
    full_ids = lm.tokenizer(render_query(template, demo.input) + answer_text(template, demo))["input_ids"]
    if len(full_ids) > len(query_ids) and full_ids[: len(query_ids)] == query_ids:
        return [int(t) for t in full_ids[len(query_ids) :]]
    return [int(t) for t in lm.tokenizer(answer_text(template, demo), add_special_tokens=False)["input_ids"]]


def ended_answer_ids(lm: LoadedModel, template: Template, demo: Demonstration) -> list[int]:
    """The answer's tokens and then the first token of what follows it in a few-shot prompt (the separator):
    what a model that has learned the task writes, up to where it stops."""
    answer = answer_ids(lm, template, demo)
    if not template.separator:
        return answer
    query = render_query(template, demo.input) + answer_text(template, demo)
    before = lm.tokenizer(query)["input_ids"]
    after = lm.tokenizer(query + template.separator)["input_ids"]
    if len(after) > len(before) and after[: len(before)] == before:
        return [*answer, int(after[len(before)])]
    return [*answer, int(lm.tokenizer(template.separator, add_special_tokens=False)["input_ids"][0])]


def answer_token(lm: LoadedModel, template: Template, demo: Demonstration) -> int:
    """The first token of the answer as the model would write it after the rendered query."""
    return answer_ids(lm, template, demo)[0]


def job_answer_end(job: Job) -> AnswerEnd:
    """Where answers to this job's task end, learned from its demonstrations (once per job)."""
    key = ("answer_end",)
    if key not in job.memo:
        job.memo[key] = learn_answer_end(
            job.template, job.demonstrations, lambda d: len(answer_ids(job.lm, job.template, d))
        )
    return job.memo[key]


@dataclass
class DevSet:
    """Held-out queries, rendered zero-shot and few-shot, with their answers (text and first token)."""

    zero_shot: list[str]
    few_shot: list[str]
    answers: torch.Tensor  # [N] token ids
    outputs: list[str]
    answer_end: AnswerEnd
    shots: int  # demonstrations in each few-shot prompt

    @classmethod
    def build(cls, job: Job, split: Split, seed: int) -> DevSet:
        """Every method's dev set is the same for the same seed: `auto` compares like with like."""
        rng = random.Random(seed + 1)
        lm, template = job.lm, job.template
        return cls(
            zero_shot=[render_query(template, d.input) for d in split.dev],
            few_shot=sample_few_shot_prompts(template, split.train, split.dev, BASELINE_SHOTS, rng),
            answers=torch.tensor([answer_token(lm, template, d) for d in split.dev]),
            outputs=[d.output for d in split.dev],
            answer_end=job_answer_end(job),
            shots=min(BASELINE_SHOTS, len(split.train) - (0 if split.held_out else 1)),
        )

    def score(self, logprobs: torch.Tensor) -> tuple[float, float]:
        """(first-token accuracy, mean log-probability of the right first token)."""
        right = logprobs.gather(1, self.answers[:, None]).squeeze(1)
        accuracy = (logprobs.argmax(-1) == self.answers).float().mean().item()
        return accuracy, right.mean().item()

    def exact(self, job: Job, prompts: Sequence[str], terms: Sequence[SteeringTerm] = ()) -> float:
        """Greedy answers, ended by the task's answer rule, equal to the demonstrated outputs (stripped)."""
        texts = greedy_answers(job.lm, prompts, terms, self.answer_end, check=job.check)
        return exact_match(texts, self.outputs)


def exact_match(texts: Sequence[str], answers: Sequence[str]) -> float:
    """The share of texts that equal their answer, whitespace stripped."""
    return sum(t.strip() == a.strip() for t, a in zip(texts, answers, strict=True)) / max(len(texts), 1)


def greedy_answers(
    lm: LoadedModel,
    prompts: Sequence[str],
    terms: Sequence[SteeringTerm],
    answer_end: AnswerEnd,
    *,
    max_new_tokens: int | None = None,
    check: Callable[[], None] = lambda: None,
    batch_size: int = 16,
) -> list[str]:
    """Each prompt's greedy continuation, every row steered by `terms`, ended by `answer_end` or after
    `max_new_tokens` (by default the rule's own bound, else DEFAULT_ANSWER_TOKENS); `check` runs before
    each batch (a computation's cancellation)."""
    if max_new_tokens is None:
        max_new_tokens = answer_end.max_tokens or DEFAULT_ANSWER_TOKENS
    engine = Engine(lm)
    texts: list[str] = []
    for start in range(0, len(prompts), batch_size):
        check()
        ids = [engine.encode(p) for p in prompts[start : start + batch_size]]
        check_prompt_lengths(lm, ids, new_tokens=1)
        window = lm.context_window or sys.maxsize
        requests = [  # an answer still running at the end of the context ends there
            GenerationRequest(
                row, tuple(terms), max_new_tokens=min(max_new_tokens, window - len(row)), answer_end=answer_end
            )
            for row in ids
        ]
        texts.extend(r.text for r in engine.generate(requests))
    return texts


@dataclass(frozen=True)
class Candidate:
    """One setting to try on the dev set: the terms applied to every dev query."""

    terms: tuple[SteeringTerm, ...]
    params: dict[str, Any]


@dataclass
class Choice:
    candidate: Candidate
    accuracy: float
    logprob: float
    table: list[dict[str, Any]]
    exact: float | None = None  # held-out exact match, when the choice already measured it


def choose(job: Job, dev: DevSet, candidates: Sequence[Candidate], batch_size: int = 48) -> Choice:
    """Score every candidate on the dev queries in shared batches; best accuracy, then best log-prob."""
    n = len(dev.zero_shot)
    table = []
    # Pack several candidates into each forward pass: rows are independent, each with its own plan.
    per_pass = max(1, batch_size // n)
    for start in range(0, len(candidates), per_pass):
        job.check()
        group = candidates[start : start + per_pass]
        texts = dev.zero_shot * len(group)
        plans = [c.terms for c in group for _ in range(n)]
        logprobs = next_token_logprobs(job.lm, texts, plans, batch_size=batch_size)
        for i, cand in enumerate(group):
            accuracy, logprob = dev.score(logprobs[i * n : (i + 1) * n])
            table.append({**cand.params, "accuracy": accuracy, "logprob": logprob})
    best = max(range(len(candidates)), key=lambda i: (table[i]["accuracy"], table[i]["logprob"]))
    return Choice(candidates[best], table[best]["accuracy"], table[best]["logprob"], table)


def by_exact_match(job: Job, dev: DevSet, candidates: Sequence[Candidate], choice: Choice) -> Choice:
    """Rank a few candidates already scored by `choose` on held-out exact match (generation, so only for short
    lists); ties go to first-token accuracy, then log-probability."""
    table = choice.table
    for row, candidate in zip(table, candidates, strict=True):
        row["exact"] = dev.exact(job, dev.zero_shot, candidate.terms)
    best = max(range(len(candidates)), key=lambda i: (table[i]["exact"], table[i]["accuracy"], table[i]["logprob"]))
    return Choice(candidates[best], table[best]["accuracy"], table[best]["logprob"], table, table[best]["exact"])


def baseline_metrics(job: Job, dev: DevSet) -> dict[str, float]:
    """Zero-shot and few-shot accuracy on the dev queries (first token and exact): what steering has to beat.

    Measured once per dev set and job: `auto`'s candidates share their held-out split and their parent's memo.
    """
    key = ("baseline", tuple(dev.zero_shot), tuple(dev.few_shot), tuple(dev.outputs))
    if key not in job.memo:
        zero = dev.score(next_token_logprobs(job.lm, dev.zero_shot))
        few = dev.score(next_token_logprobs(job.lm, dev.few_shot, batch_size=8))
        job.memo[key] = {
            "dev_zero_shot_accuracy": zero[0],
            "dev_few_shot_accuracy": few[0],
            "dev_zero_shot_exact": dev.exact(job, dev.zero_shot),
            "dev_few_shot_exact": dev.exact(job, dev.few_shot),
            "dev_few_shot_k": dev.shots,
        }
    return dict(job.memo[key])


def layer_grid(num_layers: int, limit: int = 32) -> list[int]:
    """Every layer for small models, an even spread of `limit` layers for deep ones."""
    if num_layers <= limit:
        return list(range(num_layers))
    return sorted({round(i * (num_layers - 1) / (limit - 1)) for i in range(limit)})


def few_shot_examples(
    job: Job, train: Sequence[Demonstration], opts: MethodOptions
) -> tuple[list[str], list[Demonstration]]:
    """`num_prompts` k-shot prompts, each ending in the query of a training demonstration, and those
    demonstrations."""
    rng = random.Random(opts.seed)
    queries = [train[i % len(train)] for i in range(opts.num_prompts)]
    rng.shuffle(queries)
    return sample_few_shot_prompts(job.template, train, queries, opts.k_shot, rng), queries


def few_shot_prompts(job: Job, train: Sequence[Demonstration], opts: MethodOptions) -> list[str]:
    """`num_prompts` k-shot prompts, each ending in the query of a training demonstration."""
    return few_shot_examples(job, train, opts)[0]


def strength_grid(fixed: float | None, grid: Sequence[float]) -> list[float]:
    return [fixed] if fixed is not None else list(grid)


def new_vector(
    job: Job,
    opts: MethodOptions,
    method: str,
    mode: str,
    tensors: dict[str, torch.Tensor],
    layers: Sequence[int] = (0,),
    strength: float = 1.0,
) -> TaskVector:
    """A vector of this job's model and template; layers and strength are usually chosen afterwards."""
    return TaskVector(
        method=method,
        mode=mode,
        tensors=tensors,
        layers=list(layers),
        default_strength=strength,
        fingerprint=job.lm.fingerprint,
        template=job.template,
        num_demonstrations=len(job.demonstrations),
        options=opts.model_dump(),
    )


def finish(vector: TaskVector, job: Job, dev: DevSet, split: Split, choice: Choice, **extra: Any) -> TaskVector:
    """Record the held-out comparison (zero-shot, few-shot, steered) and the time the job took."""
    vector.metrics = {
        **baseline_metrics(job, dev),
        "dev_steered_accuracy": choice.accuracy,
        "dev_steered_logprob": choice.logprob,
        "dev_steered_exact": (
            choice.exact if choice.exact is not None else dev.exact(job, dev.zero_shot, choice.candidate.terms)
        ),
        "held_out": split.held_out,
        "dev_size": len(split.dev),
        **extra,
    }
    vector.compute_seconds = job.elapsed()
    return vector


def framed(job: Job, texts: Sequence[str]) -> list[str]:
    """Texts read inside the task's query template, as queries look at inference time.

    A bare one-token word would be read at the first position, whose activations in many models are
    outliers orders of magnitude larger than elsewhere: their differences would swamp any steering.
    """
    return [render_query(job.template, text) for text in texts]
