"""How well a task's vector transfers to chat-formatted requests (issue 11, item 5).

A task registered with the default template (`Q: {input}\\nA:`) has its vector computed at the last token of
that query; a `/v1/chat/completions` request injects it at the last token of the chat prompt instead. This
measures, in process, greedy, exact match (the stripped answer equals the expected output, the text ended by
the answer-end rule of the task whose format the prompt is in):

- default template: zero-shot, 10-shot, steered with the default-template vector;
- chat prompt (one user message: the input, as /v1/chat/completions renders it): plain, 10-shot as a
  multi-turn chat, steered with the default-template vector (at its strength, and scaled), steered with a
  vector computed on the chat template (`template: "chat"`, steering.tasks.templates.chat_template).

    python -m scripts.chat_transfer [--tasks antonyms,present_past] [--method soft_injection] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Sequence
from pathlib import Path

from steering.methods import compute_vector
from steering.methods.common import exact_match, greedy_answers
from steering.model.loading import LoadedModel, load_model
from steering.steer.inject import SteeringTerm
from steering.tasks.answer_end import AnswerEnd
from steering.tasks.datasets import load_task, split_task
from steering.tasks.templates import DEFAULT_TEMPLATE, chat_template, few_shot_prompt, render_query
from steering.vectors.task_vector import TaskVector
from steering.wire.protocol import Demonstration, Template

DEFAULT_TASKS = ("antonyms", "present_past", "singular_plural", "first_letter")
SHOTS = 10
MAX_NEW_TOKENS = 32


def exact(lm: LoadedModel, prompts: Sequence[str], answers: Sequence[str], rule: AnswerEnd, terms=()) -> float:
    """Exact match in %, greedy, each text ended by `rule` (all prompts in one batch)."""
    texts = greedy_answers(lm, prompts, terms, rule, max_new_tokens=MAX_NEW_TOKENS, batch_size=max(len(prompts), 1))
    return 100.0 * exact_match(texts, answers)


def chat_prompt(lm: LoadedModel, text: str) -> str:
    """The prompt /v1/chat/completions renders for one user message."""
    return lm.tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
    )


def shots_for(pool: Sequence[Demonstration], test: Sequence[Demonstration], seed: int) -> list[list[Demonstration]]:
    rng = random.Random(seed)
    return [rng.sample(list(pool), min(SHOTS, len(pool))) for _ in test]


def measure_task(lm: LoadedModel, name: str, method: str, chat: Template, args: argparse.Namespace) -> dict:
    demos, test = split_task(load_task(name), args.demos, args.test, args.seed)
    answers = [d.output for d in test]
    inputs = [d.input for d in test]
    shots = shots_for(demos, test, args.seed)
    vectors: dict[str, TaskVector] = {}
    seconds: dict[str, float] = {}
    for label, template in (("default", DEFAULT_TEMPLATE), ("chat", chat)):
        started = time.perf_counter()
        vectors[label] = compute_vector(lm, demos, method, template=template)
        seconds[label] = round(time.perf_counter() - started, 1)
    rules = {label: v.answer_end or AnswerEnd() for label, v in vectors.items()}

    def term(label: str, scale: float = 1.0) -> list[SteeringTerm]:
        return [SteeringTerm(vectors[label], vectors[label].default_strength * scale)]

    def few_shot(template: Template) -> list[str]:
        return [few_shot_prompt(template, s, x) for s, x in zip(shots, inputs, strict=True)]

    default_q = [render_query(DEFAULT_TEMPLATE, x) for x in inputs]
    chat_q = [chat_prompt(lm, x) for x in inputs]
    if chat_q != [render_query(chat, x) for x in inputs]:
        raise SystemExit("the chat template's query does not render as the chat prompt")
    scores = {
        "default zero-shot": exact(lm, default_q, answers, rules["default"]),
        f"default {SHOTS}-shot": exact(lm, few_shot(DEFAULT_TEMPLATE), answers, rules["default"]),
        "default steered": exact(lm, default_q, answers, rules["default"], term("default")),
        "chat plain": exact(lm, chat_q, answers, rules["chat"]),
        f"chat {SHOTS}-shot": exact(lm, few_shot(chat), answers, rules["chat"]),
        "chat, default vector": exact(lm, chat_q, answers, rules["default"], term("default")),
    }
    for scale in args.scales:
        scores[f"chat, default vector x{scale:g}"] = exact(
            lm, chat_q, answers, rules["default"], term("default", scale)
        )
    scores["chat, chat vector"] = exact(lm, chat_q, answers, rules["chat"], term("chat"))
    return {
        "task": name,
        "exact": scores,
        "compute_s": seconds,
        "layers": {label: list(v.layers) for label, v in vectors.items()},
        "strength": {label: v.default_strength for label, v in vectors.items()},
        "methods": {label: v.method for label, v in vectors.items()},
    }


def table(rows: list[dict]) -> str:
    columns = list(rows[0]["exact"])
    lines = [
        "| task | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for row in rows:
        lines.append(f"| {row['task']} | " + " | ".join(f"{row['exact'][c]:.0f}" for c in columns) + " |")
    means = [sum(r["exact"][c] for r in rows) / len(rows) for c in columns]
    lines.append("| **mean** | " + " | ".join(f"**{m:.1f}**" for m in means) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help="packaged tasks, comma-separated")
    parser.add_argument("--method", default="soft_injection")
    parser.add_argument("--model", default="default")
    parser.add_argument("--demos", type=int, default=40)
    parser.add_argument("--test", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--scales",
        type=lambda s: [float(x) for x in s.split(",") if x],
        default=[0.5, 2.0],
        help="also steer chat prompts with the default-template vector at these multiples of its strength",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    lm = load_model(args.model)
    chat = chat_template(lm.tokenizer)
    started = time.perf_counter()
    rows = []
    for name in [t for t in args.tasks.split(",") if t]:
        rows.append(measure_task(lm, name, args.method, chat, args))
        print(f"{name}: {rows[-1]['exact']} (vectors in {rows[-1]['compute_s']} s)", flush=True)
    print()
    print(f"{args.method}, {args.demos} demonstrations, {args.test} test items per task, greedy, exact match in %")
    print()
    print(table(rows))
    if args.json is not None:
        report = {
            "model": args.model,
            "method": args.method,
            "demos": args.demos,
            "test": args.test,
            "seed": args.seed,
            "chat_template": chat.model_dump(),
            "tasks": rows,
            "seconds": round(time.perf_counter() - started, 1),
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
