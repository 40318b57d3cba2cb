"""scripts/totals: issue 22's totals from saved runs, `auto` read off its candidates by the rule as it is now."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scripts.totals import held_out_sets, measured, report
from steering.methods.registry import auto_candidates


def task(held_out: dict[str, float], test: dict[str, float], few_shot: float, items: int = 60) -> dict[str, Any]:
    """One task as `steer eval` writes it, reduced to what the script reads (10 held-out demonstrations)."""
    methods = {
        m: {
            "vector_method": m,
            "dev_metrics": {"dev_steered_exact": held_out[m], "dev_size": 10},
            "steered": {"exact": e},
        }
        for m, e in test.items()
    }
    return {"answers": ["x"] * items, "conditions": {"few_shot": {"exact": few_shot}}, "methods": methods}


def run(tasks: dict[str, Any], started: str = "2026-01-01", demos: int = 40, model: str = "m") -> dict[str, Any]:
    return {"meta": {"model": model, "started": started}, "config": {"n_demos": demos}, "tasks": tasks}


def every_candidate(ct_held_out: float, ct_test: float, other_held_out: float, other_test: float) -> dict[str, Any]:
    held = {m: other_held_out for m in auto_candidates()} | {"context_tuning": ct_held_out}
    test = {m: other_test for m in auto_candidates()} | {"context_tuning": ct_test}
    return task(held, test, few_shot=0.2)


def test_auto_is_read_off_the_candidates_by_todays_rule() -> None:
    # An old run whose own `auto` kept another method: today's rule keeps context tuning (within chance of it).
    close = every_candidate(ct_held_out=0.6, ct_test=0.5, other_held_out=0.7, other_test=0.1)
    close["methods"]["auto"] = {"steered": {"exact": 0.1}, "dev_metrics": {}}
    # A task vector far ahead on held-out answers is kept over context tuning.
    beaten = every_candidate(ct_held_out=0.1, ct_test=0.3, other_held_out=1.0, other_test=0.4)
    found = {m.task: m for m in measured([run({"close": close, "beaten": beaten})])}
    assert found["close"].auto == 0.5 and found["beaten"].auto == 0.4
    assert found["close"].few_shot == 0.2


def test_one_run_per_model_and_task_the_largest_then_the_latest() -> None:
    small = every_candidate(0.9, 0.9, 0.0, 0.0)
    large = every_candidate(0.9, 0.6, 0.0, 0.0) | {"answers": ["x"] * 100}
    later_small = every_candidate(0.9, 0.7, 0.0, 0.0)
    fewer_demos = every_candidate(0.9, 0.1, 0.0, 0.0) | {"answers": ["x"] * 200}
    runs = [
        run({"t": small}),
        run({"t": large}),
        run({"t": later_small}, "2026-02-01"),
        run({"t": fewer_demos}, demos=8),
    ]
    assert [m.auto for m in measured(runs)] == [0.6]
    assert [m.auto for m in measured(runs[:1] + runs[2:])] == [0.7]


def test_auto_alone_counts_only_when_it_chose_among_every_candidate_there_is() -> None:
    candidates = [{"method": m} for m in auto_candidates()]
    alone = task({}, {}, few_shot=0.3)
    alone["methods"]["auto"] = {"steered": {"exact": 0.8}, "dev_metrics": {"auto": {"candidates": candidates}}}
    before = task({}, {}, few_shot=0.3)
    before["methods"]["auto"] = {"steered": {"exact": 0.8}, "dev_metrics": {"auto": {"candidates": candidates[1:]}}}
    assert [m.task for m in measured([run({"alone": alone, "before": before})])] == ["alone"]


def test_the_report_groups_sets_lookups_and_names_lookups_that_trail(tmp_path: Path) -> None:
    for folder, names in {"unseen": ["province_country", "word_x"], "unseen_2": ["film_director", "set_aside"]}.items():
        (tmp_path / folder).mkdir()
        for name in names:
            (tmp_path / folder / f"{name}.jsonl").write_text("")
    (tmp_path / "other").mkdir()
    sets = held_out_sets(tmp_path)
    assert sets == {
        "province_country": "unseen",
        "word_x": "unseen",
        "film_director": "unseen_2",
        "set_aside": "unseen_2",
    }
    tasks = {
        "province_country": every_candidate(0.5, 0.1, 0.0, 0.0),  # 0.1 against 0.2: a lookup 10 points below
        "word_x": every_candidate(0.5, 0.6, 0.0, 0.0),
        "film_director": every_candidate(0.5, 0.3, 0.0, 0.0),
        "sentiment": every_candidate(0.5, 1.0, 0.0, 0.0),
    }
    text = report(measured([run(tasks)]), sets)
    assert "| unseen | 2 | 20.0 | 35.0 | +15.00 |" in text
    assert "| **every held-out set** | 3 | 20.0 | 33.3 | +13.33 |" in text
    assert "| **every task nobody tuned on** | 4 | 20.0 | 50.0 | +30.00 |" in text
    assert "| the knowledge lookups of the held-out sets | 2 | 20.0 | 20.0 | +0.00 |" in text
    assert "more than 5 points below prompting: province_country -10.0" in text
    assert "without a run that says `auto`: 1 (set_aside)" in text
