"""Merge `steer eval` results of disjoint task sets, run apart with the same settings (e.g. one process per
core), into one results.json with its summary, Markdown and plots.

    python -m scripts.merge_results /tmp/a/results.json /tmp/b/results.json --out docs/results

Each task's results depend only on the task, the seed and the code, so runs split by task merge exactly;
runs with other settings are refused.
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


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    settings = [{k: v for k, v in r["config"].items() if k != "tasks"} for r in results]
    if any(s != settings[0] for s in settings[1:]):
        raise SystemExit("these runs differ in more than their tasks: they do not merge")
    tasks: dict[str, Any] = {}
    for result in results:
        if set(result["tasks"]) & set(tasks):
            raise SystemExit(f"task(s) {sorted(set(result['tasks']) & set(tasks))} appear in more than one run")
        tasks.update(result["tasks"])
    config = EvalConfig(**{**settings[0], "tasks": list(tasks)})
    meta = {
        **results[0]["meta"],
        "command": reproduce_command(config),
        "seconds": max(r["meta"]["seconds"] for r in results),
        "note": (
            f"run as {len(results)} processes of disjoint tasks, merged (python -m scripts.merge_results): each "
            "task's results depend only on the task, the seed and the code; wall time is the longest process's"
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
    parser.add_argument("results", nargs="+", type=Path, help="results.json files of disjoint task sets")
    parser.add_argument("--out", type=Path, required=True, help="folder for the merged outputs")
    args = parser.parse_args()
    merged = merge([json.loads(p.read_text(encoding="utf-8")) for p in args.results])
    for path in write_outputs(merged, args.out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
