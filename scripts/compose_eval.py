"""Composed KV prefixes, measured: does each task still answer its own inputs when two context-tuning tasks steer
one request (docs/RESULTS.md)?

    OMP_NUM_THREADS=1 python -m scripts.compose_eval --model default --pairs country_capital+antonyms --test 20 --out F

For each pair (A, B): context tuning on 40 demonstrations of each (seed 0, the split `steer eval` makes), then exact
match on A's test items and on B's, with A alone, B alone, and both composed in each layout
(`steering.steer.prefix_compose`) and order, every answer ended by the rule the service applies to a request naming
what steers it (one task's, or both combined). Prints a markdown table; writes every answer to F (JSON).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from steering.eval.scoring import exact_right
from steering.methods import compute_vector
from steering.methods.common import greedy_answers
from steering.model.loading import LoadedModel, load_model
from steering.steer.inject import SteeringTerm
from steering.steer.prefix_compose import LAYOUTS, PrefixComposer
from steering.tasks.answer_end import AnswerEnd, template_end
from steering.tasks.datasets import load_task, split_task
from steering.tasks.templates import render_query
from steering.vectors.task_vector import TaskVector


def answer_end(vectors: list[TaskVector]) -> AnswerEnd:
    return AnswerEnd.combine([v.answer_end or template_end(v.template) for v in vectors])


def conditions(layouts: list[str]) -> list[str]:
    return ["A", "B", *(f"{layout}: {order}" for layout in layouts for order in ("A, B", "B, A"))]


def measure_pair(lm: LoadedModel, layouts: list[str], names: tuple[str, str], test: int) -> dict:
    vectors, tests = [], []
    for name in names:
        demos, held = split_task(load_task(name), 40, test, seed=0)
        vectors.append(compute_vector(lm, demos, "context_tuning"))
        tests.append(held)
    a, b = (SteeringTerm(v, 1.0) for v in vectors)
    plans = {"A": ([a], [vectors[0]], None), "B": ([b], [vectors[1]], None)}
    for layout in layouts:
        plans[f"{layout}: A, B"] = ([a, b], vectors, layout)
        plans[f"{layout}: B, A"] = ([b, a], vectors[::-1], layout)
    composers = {layout: PrefixComposer(lm, layout=layout) for layout in layouts}
    rows: dict[str, dict] = {}
    for name, vector, items in zip(names, vectors, tests, strict=True):
        prompts = [render_query(vector.template, item.input) for item in items]
        rows[name] = {}
        for condition, (terms, parts, layout) in plans.items():
            plan = composers[layout].compose(terms) if layout is not None else terms
            texts = greedy_answers(lm, prompts, plan, answer_end(parts))
            rows[name][condition] = {
                "exact": sum(exact_right(t, i.output) for t, i in zip(texts, items, strict=True)) / len(items),
                "answers": texts,
            }
    return {"tasks": list(names), "prefix_tokens": [v.prefix_tokens for v in vectors], "scores": rows}


def table(results: list[dict], layouts: list[str]) -> str:
    names = conditions(layouts)
    lines = ["| pair (A + B) | items of | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for result in results:
        pair = " + ".join(result["tasks"])
        for task, scores in result["scores"].items():
            cells = " | ".join(f"{100 * scores[c]['exact']:.1f}" for c in names)
            lines.append(f"| {pair} | {task} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--pairs", required=True, help="A+B,C+D,... (packaged task names)")
    parser.add_argument("--layouts", default=",".join(LAYOUTS))
    parser.add_argument("--test", type=int, default=20)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    layouts = args.layouts.split(",")
    lm = load_model(args.model)
    results = []
    for pair in args.pairs.split(","):
        first, second = pair.split("+")
        results.append(measure_pair(lm, layouts, (first, second), args.test))
        args.out.write_text(json.dumps({"model": lm.name, "test": args.test, "pairs": results}, indent=1))
        print(table(results[-1:], layouts), flush=True)
    print(table(results, layouts))


if __name__ == "__main__":
    main()
