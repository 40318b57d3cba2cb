"""Soft injection on the real default model: steered zero-shot at least as accurate as 10-shot prompting."""

from __future__ import annotations

import pytest

from steering.datasets import load_task, split_task
from steering.eval.evaluator import TaskEvaluator
from steering.inject import SteeringTerm
from steering.methods import compute_vector
from steering.model import LoadedModel
from steering.templates import DEFAULT_TEMPLATE

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

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
    rows = []
    for task in TASKS:
        demos, test = split_task(load_task(task), 40, 20, seed=0)
        vector = compute_vector(default_lm, demos, "soft_injection")
        evaluator = TaskEvaluator(default_lm, DEFAULT_TEMPLATE, test)
        rows.append(
            (
                task,
                evaluator.first_token(evaluator.queries),
                evaluator.first_token(evaluator.few_shot_prompts(demos, 10)),
                evaluator.first_token(evaluator.queries, [SteeringTerm(vector, vector.default_strength)]),
                vector.compute_seconds,
            )
        )
    for task, zero, few, steered, seconds in rows:
        print(f"{task:18s} zero-shot {zero:.2f}  10-shot {few:.2f}  soft injection {steered:.2f}  ({seconds:.0f} s)")
    mean = [sum(r[i] for r in rows) / len(rows) for i in (1, 2, 3)]
    print(f"{'mean':18s} zero-shot {mean[0]:.3f}  10-shot {mean[1]:.3f}  soft injection {mean[2]:.3f}")
    assert mean[2] >= mean[1]
    assert mean[2] >= mean[0] + 0.30
