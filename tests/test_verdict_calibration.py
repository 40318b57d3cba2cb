"""scripts/verdict_calibration: `auto`'s held-out verdicts set beside the test items' gap to prompting."""

from __future__ import annotations

from typing import Any

from scripts.verdict_calibration import pairs, report
from steering.tasks.verdict import chance_margin


def task(dev: tuple[float, float], test: tuple[float, float], items: int, rating: str) -> dict[str, Any]:
    """One task as `steer eval` writes it, reduced to what the script reads: (steered, 10-shot) exact match on the
    10 held-out demonstrations and on `items` test items."""
    verdict = {
        "rating": rating,
        "metric": "exact",
        "steered": dev[0],
        "few_shot": dev[1],
        "margin": chance_margin(dev[0], dev[1], 10),
    }
    return {
        "answers": ["x"] * items,
        "conditions": {"few_shot": {"exact": test[1]}},
        "methods": {"auto": {"steered": {"exact": test[0]}, "verdict": verdict}},
    }


def run(model: str, started: str, tasks: dict[str, Any]) -> dict[str, Any]:
    return {"meta": {"model": model, "started": started}, "tasks": tasks}


def test_each_task_counts_once_from_its_largest_run_and_the_margin_is_held_to_the_test_gap() -> None:
    results = [
        run("m", "2026-01-01", {"a": task((0.3, 0.1), (0.9, 0.0), 20, "better_than_few_shot")}),  # superseded
        run("m", "2026-01-02", {"a": task((0.3, 0.1), (0.25, 0.15), 60, "better_than_few_shot")}),
        run(
            "m",
            "2026-01-03",
            {
                "b": task((0.9, 0.2), (0.1, 0.3), 40, "better_than_few_shot"),  # past its margin, then the other side
                "c": task((0.2, 0.3), (0.3, 0.2), 40, "below_few_shot"),
                "d": task((0.4, 0.4), (0.45, 0.4), 40, "as_good_as_few_shot"),
            },
        ),
        run("other", "2026-01-01", {"a": task((0.3, 0.1), (0.3, 0.1), 20, "better_than_few_shot")}),
        run("m", "2026-01-04", {"e": {**task((0.5, 0.1), (0.5, 0.1), 20, "x"), "methods": {}}}),  # no auto: skipped
    ]
    found = pairs(results)
    assert [(p.model, p.task, p.test_items) for p in found] == [
        ("m", "a", 60),
        ("m", "b", 40),
        ("m", "c", 40),
        ("m", "d", 40),
        ("other", "a", 20),
    ]
    by_task = {(p.model, p.task): p for p in found}
    assert abs(by_task[("m", "a")].test_gap - 0.1) < 1e-9 and by_task[("m", "a")].covered
    assert by_task[("m", "b")].firm and not by_task[("m", "b")].covered
    text = report(found)
    assert "pairs: 5; the held-out interval holds the test gap on 4 (80 %)" in text
    assert "better_than_few_shot: 3; the test items on the same side of prompting: 2 (67 %)" in text
    assert "past the margin on the held-out answers: 1, of which on the same side on the test items: 0" in text
    assert "below_few_shot: 1; the test items on the same side of prompting: 0 (0 %)" in text
    assert "as_good_as_few_shot: 1; the test gap within the margin: 1" in text
    assert "no_effect: 0; the test gap within the margin: 0" in text
