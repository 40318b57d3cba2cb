"""Render demonstrations and queries with a task's template."""

from __future__ import annotations

import random
from collections.abc import Sequence

from steering.protocol import Demonstration, Template

DEFAULT_TEMPLATE = Template()


def render_example(template: Template, demo: Demonstration) -> str:
    return template.example.replace("{input}", demo.input).replace("{output}", demo.output)


def render_query(template: Template, text: str) -> str:
    return template.query.replace("{input}", text)


def few_shot_prompt(template: Template, demos: Sequence[Demonstration], query: str) -> str:
    """k demonstrations then the zero-shot query, joined by the template's separator."""
    parts = [render_example(template, d) for d in demos]
    parts.append(render_query(template, query))
    return template.separator.join(parts)


def answer_text(template: Template, demo: Demonstration) -> str:
    """What follows the rendered query in a rendered example: ' cold' for 'Q: hot\\nA:' -> 'Q: hot\\nA: cold'."""
    example = render_example(template, demo)
    query = render_query(template, demo.input)
    if example.startswith(query):
        return example[len(query) :]
    return " " + demo.output


def stop_strings(template: Template) -> list[str]:
    """A steered zero-shot answer does not stop by itself: stop where the template's next part would begin."""
    stops = {"\n"} if "\n" not in answer_text(template, Demonstration(input="x", output="y")) else set()
    sep = template.separator
    if sep.strip() or "\n" not in sep:
        stops.add(sep)
    return sorted(s for s in stops if s)


def sample_few_shot_prompts(
    template: Template,
    pool: Sequence[Demonstration],
    queries: Sequence[Demonstration],
    k: int,
    rng: random.Random,
    shuffle_labels: bool = False,
) -> list[str]:
    """One k-shot prompt per query, demonstrations drawn from `pool` without the query itself."""
    prompts = []
    for query in queries:
        candidates = [d for d in pool if d.input != query.input]
        shots = rng.sample(candidates, min(k, len(candidates)))
        if shuffle_labels and len(shots) > 1:
            outputs = [d.output for d in shots]
            rng.shuffle(outputs)
            shots = [Demonstration(input=d.input, output=o) for d, o in zip(shots, outputs, strict=True)]
        prompts.append(few_shot_prompt(template, shots, query.input))
    return prompts
