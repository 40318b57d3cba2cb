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
EXACT_MARGIN = 0.05  # steered exact match within 5 points of 10-shot prompting (docs/RESULTS.md: 75.0 vs 71.7)

# Each task is a whole soft injection computation on the default model (a third of the suite's CPU time before
# it was cut to these), so one per path: one-token answers (antonyms: no answer gates) and longer answers,
# whose answer gates are trained and kept (country_capital) or trained and dropped on held-out exact match
# (present_past). All 16 packaged tasks are measured by `steer eval` (docs/RESULTS.md).
TASKS = ("antonyms", "present_past", "country_capital")


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
                evaluator.scores(evaluator.queries, exact=False),  # zero-shot exact match is asserted nowhere
                evaluator.scores(few_shot),
                evaluator.scores(evaluator.queries, steer),
                f"{vector.mode}, {vector.compute_seconds:.0f} s",
            )
        )
    for task, zero, few, steered, how in rows:
        print(
            f"{task:18s} first-token / exact: zero-shot {zero.first_token:.2f} / -  "
            f"10-shot {few.first_token:.2f} / {few.exact:.2f}  "
            f"soft injection {steered.first_token:.2f} / {steered.exact:.2f}  ({how})"
        )
    first = [sum(r[i].first_token for r in rows) / len(rows) for i in (1, 2, 3)]
    exact = [sum(r[i].exact for r in rows) / len(rows) for i in (2, 3)]  # 10-shot, soft injection
    print(f"{'mean':18s} first-token {first}  exact {exact}")
    assert first[2] >= first[1]
    assert first[2] >= first[0] + 0.30
    assert exact[1] >= exact[0] - EXACT_MARGIN
