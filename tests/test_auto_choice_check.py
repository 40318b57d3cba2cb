"""scripts/auto_choice_check: `auto`'s rules replayed on saved runs, and what `auto.settled` would have skipped."""

from __future__ import annotations

from typing import Any

from scripts.auto_choice_check import cases, report


def task(held_out: dict[str, float], test: dict[str, float], few_shot: float) -> dict[str, Any]:
    """One task as `steer eval` writes it, reduced to what the script reads (10 held-out demonstrations, 40 test
    items, every candidate 10 s of compute)."""
    methods: dict[str, Any] = {
        m: {
            "dev_metrics": {"dev_steered_exact": e, "dev_size": 10},
            "steered": {"exact": test[m]},
            "compute_seconds": 10,
        }
        for m, e in held_out.items()
    }
    methods["auto"] = {
        "dev_metrics": {"auto": {"candidates": [{"method": m, "dev_exact": e} for m, e in held_out.items()]}}
    }
    return {"answers": ["x"] * 40, "conditions": {"few_shot": {"exact": few_shot}}, "methods": methods}


def test_rules_are_replayed_on_the_test_items_and_settled_tasks_counted() -> None:
    settled_task = task({"task_vector": 0.6, "context_tuning": 0.8}, {"task_vector": 0.5, "context_tuning": 0.7}, 0.4)
    beaten = task({"task_vector": 0.9, "context_tuning": 0.2}, {"task_vector": 0.6, "context_tuning": 0.3}, 0.5)
    close = task({"soft_injection": 0.5, "context_tuning": 0.4}, {"soft_injection": 0.2, "context_tuning": 0.6}, 0.3)
    run = {"meta": {"model": "m", "started": "2026-01-01"}, "config": {"n_demos": 40}}
    found = cases([{**run, "tasks": {"a": settled_task, "b": beaten, "c": close}}])
    text = report(found)
    assert "task-model pairs: 3" in text
    # Highest held-out: a +30, b +10, c -10. choose: the same on a and b (the task vector leads by more than
    # chance), context tuning on c (within chance), +30. Context tuning always: +30, -20, +30.
    assert "the highest held-out score: +10.00 points" in text
    assert "auto.choose: +23.33 points" in text
    assert "context tuning always: +13.33 points" in text
    assert (
        "settled by context tuning's held-out score: 1 of 3; the others' compute time skipped: 10 s of 60 s (17 %)"
        in text
    )
    # The same task at another number of demonstrations is another pair; a smaller run of the same pair is not.
    fewer = {**run, "config": {"n_demos": 8}, "tasks": {"a": settled_task}}
    smaller = {**run, "started": "2026-01-02", "tasks": {"a": {**beaten, "answers": ["x"] * 20}}}
    assert len(cases([{**run, "tasks": {"a": settled_task}}, fewer, smaller])) == 2


def test_candidates_auto_skipped_are_replayed_from_their_own_columns() -> None:
    """Since `auto` skips candidates once context tuning settles it, `steer eval` lists them as skipped; their runs
    are still its columns, so the replay and the skipped time count them."""
    written = task({"context_tuning": 0.8, "task_vector": 0.6}, {"context_tuning": 0.7, "task_vector": 0.5}, 0.4)
    written["methods"]["auto"]["dev_metrics"]["auto"]["candidates"] = [
        {"method": "context_tuning", "dev_exact": 0.8},
        {"method": "task_vector", "skipped": "settled by context tuning"},
    ]
    run = {"meta": {"model": "m", "started": "2026-01-01"}, "config": {"n_demos": 40}, "tasks": {"a": written}}
    text = report(cases([run]))
    assert "the highest held-out score: +30.00 points" in text
    assert "the others' compute time skipped: 10 s of 20 s (50 %)" in text
