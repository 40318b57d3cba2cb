"""How long a task's prompts get against the model's context window, so a task too long for the model is refused
before any pass (an IndexError deep in a learned-position embedding otherwise, a device-side assert on a GPU, or
silent garbage past RoPE's range).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from steering.model.loading import LoadedModel
from steering.tasks.templates import few_shot_prompt, render_example, render_query
from steering.wire.protocol import Demonstration, Template


class PromptTooLong(ValueError):
    """A prompt (with what is generated or teacher-forced after it) longer than the model's context window."""


def check_prompt_lengths(lm: LoadedModel, ids: Sequence[Sequence[int]], new_tokens: int = 0) -> None:
    """`PromptTooLong` when any of these token sequences, with `new_tokens` generated after it, is longer than
    the model reads."""
    window = lm.context_window
    longest = max((len(row) for row in ids), default=0)
    if window is not None and longest + new_tokens > window:
        generated = f" and {new_tokens} generated after it" if new_tokens else ""
        raise PromptTooLong(
            f"a prompt of this task takes {longest} tokens{generated}, and {lm.name} reads at most {window}: "
            "use shorter demonstrations, or fewer in each prompt (the method's k_shot option)"
        )


def longest_prompt_tokens(tokenizer: Any, template: Template, demos: Sequence[Demonstration], shots: int) -> int:
    """About the most tokens a `shots`-shot prompt of these demonstrations takes with its answer after it (teacher
    forced when gates or a prefix are trained, generated when answers are scored): the demonstration whose prompt
    and answer are longest, after the `shots` longest other examples (a prompt never shows its own query),
    tokenised together."""
    if not demos:
        return 0

    def lengths(texts: list[str]) -> list[int]:
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    examples = lengths([render_example(template, d) for d in demos])
    queries = lengths([render_query(template, d.input) for d in demos])
    answers = lengths([d.output for d in demos])
    order = sorted(range(len(demos)), key=lambda i: examples[i], reverse=True)[: shots + 1]

    def shots_for(query: int) -> list[int]:
        return [i for i in order if i != query][:shots]

    def size(q: int) -> int:
        return sum(examples[i] for i in shots_for(q)) + queries[q] + answers[q]

    query = max(range(len(demos)), key=size)
    prompt = few_shot_prompt(template, [demos[i] for i in shots_for(query)], demos[query].input)
    return len(tokenizer(prompt)["input_ids"]) + answers[query]
