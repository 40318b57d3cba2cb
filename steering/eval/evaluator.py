"""Accuracy of zero-shot, few-shot and steered runs on held-out items of a task.

First-token accuracy compares the most likely next token with the answer's first token (one forward
pass per query). Exact match generates greedily until the answer ends (the task's rule learned from its
demonstrations, or the template's stop rule) and compares the stripped text with the answer.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

from steering.methods.capture import next_token_logprobs
from steering.methods.common import answer_token, exact_match, greedy_answers
from steering.model.loading import LoadedModel
from steering.steer.inject import SteeringTerm
from steering.tasks.answer_end import AnswerEnd, template_end
from steering.tasks.templates import few_shot_prompt, render_query
from steering.vectors.task_vector import TaskVector
from steering.wire.protocol import Demonstration, Template


@dataclass
class Scores:
    first_token: float
    exact: float | None = None


@dataclass
class VectorEval:
    method: str
    strength: float
    layers: list[int]
    steered: Scores
    compute_seconds: float
    strength_sweep: dict[str, float] = field(default_factory=dict)  # strength -> first-token accuracy
    dev_metrics: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class TaskEvaluator:
    """Scores prompts of one task's held-out items, with or without steering."""

    def __init__(
        self,
        lm: LoadedModel,
        template: Template,
        test: Sequence[Demonstration],
        *,
        answer_end: AnswerEnd | None = None,
        batch_size: int = 16,
    ):
        self.lm, self.template, self.test, self.batch_size = lm, template, list(test), batch_size
        self.answer_end = answer_end or template_end(template)
        self.queries = [render_query(template, d.input) for d in self.test]
        self.answers = torch.tensor([answer_token(lm, template, d) for d in self.test])

    def few_shot_prompts(self, pool: Sequence[Demonstration], k: int, seed: int = 0) -> list[str]:
        rng = random.Random(seed)
        return [few_shot_prompt(self.template, rng.sample(list(pool), min(k, len(pool))), d.input) for d in self.test]

    def first_token(self, prompts: Sequence[str], terms: Sequence[SteeringTerm] = ()) -> float:
        plans = [tuple(terms)] * len(prompts) if terms else None
        logprobs = next_token_logprobs(self.lm, prompts, plans, batch_size=self.batch_size)
        return (logprobs.argmax(-1) == self.answers).float().mean().item()

    def exact(self, prompts: Sequence[str], terms: Sequence[SteeringTerm] = (), max_new_tokens: int = 12) -> float:
        texts = greedy_answers(
            self.lm, prompts, terms, self.answer_end, max_new_tokens=max_new_tokens, batch_size=self.batch_size
        )
        return exact_match(texts, [d.output for d in self.test])

    def scores(self, prompts: Sequence[str], terms: Sequence[SteeringTerm] = (), exact: bool = True) -> Scores:
        return Scores(self.first_token(prompts, terms), self.exact(prompts, terms) if exact else None)

    def vector(self, vector: TaskVector, *, exact: bool = True, sweep: Sequence[float] = ()) -> VectorEval:
        strength = vector.default_strength
        steered = self.scores(self.queries, [SteeringTerm(vector, strength)], exact)
        swept = {f"{s:g}": self.first_token(self.queries, [SteeringTerm(vector, strength * s)]) for s in sweep}
        dev = {k: v for k, v in vector.metrics.items() if not k.endswith("scan")}
        return VectorEval(vector.method, strength, list(vector.layers), steered, vector.compute_seconds, swept, dev)
