"""Merge `steer eval` results of runs split by task or by method (e.g. one process per core, or a new method
measured after the others), run apart with the same other settings, into one results.json with its summary,
Markdown and plots.

    python -m scripts.merge_results /tmp/a/results.json /tmp/b/results.json --out docs/results

Each task's results depend only on the task, the seed and the code, and each method's only on the method as well,
so such runs merge exactly: a task's zero-shot and few-shot conditions must agree between the runs that hold it,
and `auto` is read off its candidates (as `steer eval` does) once all of them are in, replacing an `auto` that chose
among fewer of them. Runs with other settings, or that both hold one method of one task, are refused.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from steering.eval.config import EvalConfig, reproduce_command
from steering.eval.report import write_outputs
from steering.eval.scoring import summarise
from steering.eval.suite import AUTO, auto_from_candidates
from steering.methods.registry import auto_candidates
from steering.tasks.verdict import verdict


def _merge_task(name: str, mine: dict[str, Any], theirs: dict[str, Any]) -> None:
    """`theirs`' methods into `mine` (in place): the same items and prompting conditions, no method twice."""
    if mine["inputs"] != theirs["inputs"] or mine["conditions"] != theirs["conditions"]:
        raise SystemExit(f"task {name}: the runs disagree on its test items or prompting conditions")
    twice = set(mine["methods"]) & set(theirs["methods"])
    if twice:
        raise SystemExit(f"task {name}: method(s) {sorted(twice)} appear in more than one run")
    mine["methods"].update(theirs["methods"])
    mine["seconds"] = mine["seconds"] + theirs["seconds"]


def chose_among(run: dict[str, Any]) -> set[str]:
    """The candidates an `auto` compared or skipped, as its report lists them (read off its candidates, or computed
    for real); none for a failed one, or one computed for real before runs kept its report."""
    return {c["method"] for c in run.get("dev_metrics", {}).get("auto", {}).get("candidates", [])}


def _with_auto(task: dict[str, Any]) -> bool:
    """Read `auto` off the task's candidates when they are all in and it is not, or when it was read off fewer of
    them than are now in (a run of `auto` made before a new candidate was measured, or computed for real among
    fewer); whether the task has `auto`."""
    runs = task["methods"]
    all_in = set(auto_candidates()) <= set(runs)
    measured = {m for m in auto_candidates() if m in runs and "error" not in runs[m]}
    if all_in and AUTO in runs and "error" not in runs[AUTO] and not measured <= chose_among(runs[AUTO]):
        del runs[AUTO]
    if AUTO not in runs and all_in:
        runs[AUTO] = auto_from_candidates(runs)
        if "error" not in runs[AUTO]:
            found = verdict(runs[AUTO]["vector_method"], runs[AUTO]["dev_metrics"])
            runs[AUTO]["verdict"] = found.model_dump() if found is not None else None
    return AUTO in runs


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    # read through EvalConfig so that a run older than a setting counts as having had its default
    settings = [
        {k: v for k, v in asdict(EvalConfig(**r["config"])).items() if k not in ("tasks", "methods")} for r in results
    ]
    if any(s != settings[0] for s in settings[1:]):
        raise SystemExit("these runs differ in more than their tasks and methods: they do not merge")
    tasks: dict[str, Any] = {}
    methods: list[str] = []
    for result in results:
        methods += [m for m in result["config"]["methods"] if m not in methods]
        for name, task in result["tasks"].items():
            if name in tasks:
                _merge_task(name, tasks[name], task)
            else:
                tasks[name] = json.loads(json.dumps(task))  # a copy: the runs are not changed
    if all(_with_auto(task) for task in tasks.values()) and AUTO not in methods:
        methods.append(AUTO)
    config = EvalConfig(**{**settings[0], "tasks": list(tasks), "methods": methods})
    meta = {
        **results[0]["meta"],
        "command": reproduce_command(config),
        "seconds": max(r["meta"]["seconds"] for r in results),
        "note": (
            f"run as {len(results)} processes of disjoint tasks or methods, merged (python -m scripts.merge_results): "
            "each task's results depend only on the task, the method, the seed and the code; wall time is the "
            "longest process's"
        ),
    }
    return {
        "config": asdict(config),
        "meta": meta,
        "definitions": results[0]["definitions"],
        "tasks": tasks,
        "summary": summarise(tasks, config),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="results.json files of disjoint tasks or methods")
    parser.add_argument("--out", type=Path, required=True, help="folder for the merged outputs")
    args = parser.parse_args()
    merged = merge([json.loads(p.read_text(encoding="utf-8")) for p in args.results])
    for path in write_outputs(merged, args.out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
