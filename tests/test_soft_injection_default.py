"""Soft injection on the real default model: steered zero-shot at least as accurate as 10-shot prompting."""

from __future__ import annotations

import pytest

from steering.eval.evaluator import TaskEvaluator
from steering.methods import compute_vector
from steering.model.loading import LoadedModel
from steering.steer.inject import SteeringTerm
from steering.tasks.datasets import load_task, split_task
from steering.tasks.templates import DEFAULT_TEMPLATE

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]
EXACT_MARGIN = 0.05  # steered exact match within 5 points of 10-shot prompting (measured: 53.8 vs 53.1)

TASKS = (
    "antonyms",
    "country_capital",
    "english_french",
    "present_past",
    "singular_plural",
    "english_spanish",
    "country_currency",
    "comparative",
)


def test_soft_injection_matches_ten_shot_prompting_on_average(default_lm: LoadedModel) -> None:
    """First token and exact match; every condition's answer ends by the rule learned from the demonstrations."""
    rows = []
    for task in TASKS:
        demos, test = split_task(load_task(task), 40, 20, seed=0)
        vector = compute_vector(default_lm, demos, "soft_injection")
        evaluator = TaskEvaluator(default_lm, DEFAULT_TEMPLATE, test, answer_end=vector.answer_end)
        few_shot = evaluator.few_shot_prompts(demos, 10)
        steer = [SteeringTerm(vector, vector.default_strength)]
        rows.append(
            (
                task,
                evaluator.scores(evaluator.queries),
                evaluator.scores(few_shot),
                evaluator.scores(evaluator.queries, steer),
                vector.compute_seconds,
            )
        )
    for task, zero, few, steered, seconds in rows:
        print(
            f"{task:18s} first-token / exact: zero-shot {zero.first_token:.2f} / {zero.exact:.2f}  "
            f"10-shot {few.first_token:.2f} / {few.exact:.2f}  "
            f"soft injection {steered.first_token:.2f} / {steered.exact:.2f}  ({seconds:.0f} s)"
        )
    first = [sum(r[i].first_token for r in rows) / len(rows) for i in (1, 2, 3)]
    exact = [sum(r[i].exact for r in rows) / len(rows) for i in (1, 2, 3)]
    print(f"{'mean':18s} first-token {first}  exact {exact}")
    assert first[2] >= first[1]
    assert first[2] >= first[0] + 0.30
    assert exact[2] >= exact[1] - EXACT_MARGIN
