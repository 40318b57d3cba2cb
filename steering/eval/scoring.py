"""Scoring: the metrics' definitions, one condition's accuracies, and their means over tasks."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from steering.eval.backends import Backend, Steer
from steering.eval.config import EvalConfig
from steering.tasks.answer_end import AnswerEnd, learn_answer_end
from steering.tasks.templates import DEFAULT_TEMPLATE, few_shot_prompt, render_query, stop_strings
from steering.wire.protocol import Demonstration

DEFINITIONS = {
    "first_token": (
        "the greedy one-token completion of the prompt, whitespace stripped, is a non-empty prefix of the answer"
    ),
    "exact": (
        "greedy generation until the answer ends, whitespace stripped, equals the answer; the answer ends by the "
        "rule learned from the task's demonstrations (the template's newline, punctuation no demonstrated answer "
        "contains, their word count), the same for every condition"
    ),
    "sweep": (
        "strength = multiple x the strength the method chose on its held-out demonstrations "
        "(x0 = no steering: the zero-shot numbers)"
    ),
    "split": "demonstrations and test items are disjoint, drawn from a seeded shuffle of the task's items",
    "few_shot": "k demonstrations sampled (seeded) per test item from the task's demonstrations",
}


def first_token_right(text: str, answer: str) -> bool:
    piece = text.strip()
    return bool(piece) and answer.strip().startswith(piece)


def exact_right(text: str, answer: str) -> bool:
    return text.strip() == answer.strip()


def accuracy(texts: Sequence[str], answers: Sequence[str], right: Callable[[str, str], bool]) -> float:
    return sum(right(t, a) for t, a in zip(texts, answers, strict=True)) / max(len(answers), 1)


@dataclass
class Probe:
    """One task's test queries, its k-shot prompts and the answers."""

    queries: list[str]
    few_shot: list[str]
    answers: list[str]
    stop: list[str]
    answer_end: AnswerEnd


def build_probe(demos: Sequence[Demonstration], test: Sequence[Demonstration], k: int, seed: int) -> Probe:
    rng = random.Random(seed)
    template = DEFAULT_TEMPLATE
    shots = [rng.sample(list(demos), min(k, len(demos))) for _ in test]
    return Probe(
        queries=[render_query(template, d.input) for d in test],
        few_shot=[few_shot_prompt(template, s, d.input) for s, d in zip(shots, test, strict=True)],
        answers=[d.output for d in test],
        stop=stop_strings(template),
        answer_end=learn_answer_end(template, demos),
    )


def score(
    backend: Backend, prompts: Sequence[str], probe: Probe, steer: Steer | None, config: EvalConfig, keep: bool
) -> dict[str, Any]:
    """First-token and exact-match accuracy of one condition (with the generations when `keep`)."""
    firsts = backend.complete(prompts, steer, 1, ())
    # Ending the text afterwards is ending it while generating: greedy tokens before the end do not change.
    full = [probe.answer_end.apply(t) for t in backend.complete(prompts, steer, config.max_new_tokens, probe.stop)]
    result: dict[str, Any] = {
        "first_token": accuracy(firsts, probe.answers, first_token_right),
        "exact": accuracy(full, probe.answers, exact_right),
    }
    if keep:
        result["outputs"] = full
    return result


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def condition_scores(task: dict[str, Any], condition: str) -> dict[str, Any] | None:
    """The scores of `zero_shot`, `few_shot` or a method's steered run; None where that method failed."""
    if condition in task["conditions"]:
        return task["conditions"][condition]
    method = task["methods"].get(condition, {})
    return method.get("steered") if "error" not in method else None


def condition_label(condition: str, k_shot: int) -> str:
    return {"zero_shot": "zero-shot", "few_shot": f"{k_shot}-shot"}.get(condition, condition)


def summarise(tasks: dict[str, Any], config: EvalConfig) -> dict[str, Any]:
    """Means over tasks: per condition, and per method per strength multiple."""
    conditions = ["zero_shot", "few_shot", *config.methods]
    summary: dict[str, Any] = {}
    for metric in ("first_token", "exact"):
        summary[metric] = {}
        for cond in conditions:
            found = [s[metric] for t in tasks.values() if (s := condition_scores(t, cond)) is not None]
            summary[metric][cond] = _mean(found)
    summary["sweep"] = {}
    for method in config.methods:
        runs = [t["methods"][method]["sweep"] for t in tasks.values() if "sweep" in t["methods"].get(method, {})]
        summary["sweep"][method] = [
            {
                "multiple": m,
                "first_token": _mean([r[i]["first_token"] for r in runs]),
                "exact": _mean([r[i]["exact"] for r in runs]),
            }
            for i, m in enumerate(sorted(config.multiples))
        ]
    return summary
