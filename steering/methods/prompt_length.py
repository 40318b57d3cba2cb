"""How long a task's prompts get against the model's context window, so a task too long for the model is refused
before any pass (an IndexError deep in a learned-position embedding otherwise, or silent garbage past RoPE's range).
"""

from __future__ import annotations

from collections.abc import Sequence

from steering.model.loading import LoadedModel
from steering.tasks.templates import few_shot_prompt, render_example, render_query
from steering.wire.protocol import Demonstration, Template


class PromptTooLong(ValueError):
    """A prompt longer than the model's context window."""


def check_prompt_lengths(lm: LoadedModel, ids: Sequence[Sequence[int]]) -> None:
    """`PromptTooLong` when any of these encoded prompts is longer than the model reads."""
    window = lm.context_window
    longest = max((len(row) for row in ids), default=0)
    if window is not None and longest > window:
        raise PromptTooLong(
            f"a prompt of this task takes {longest} tokens and {lm.name} reads at most {window}: "
            "use shorter demonstrations, or fewer in each prompt (the method's k_shot option)"
        )


def longest_prompt_tokens(lm: LoadedModel, template: Template, demos: Sequence[Demonstration], shots: int) -> int:
    """The tokens of the longest `shots`-shot prompt these demonstrations make: the longest examples (by their own
    tokens) before the longest query, tokenised together."""
    if not demos:
        return 0
    tokenizer = lm.tokenizer
    examples = tokenizer([render_example(template, d) for d in demos], add_special_tokens=False)["input_ids"]
    queries = tokenizer([render_query(template, d.input) for d in demos], add_special_tokens=False)["input_ids"]
    longest = sorted(range(len(demos)), key=lambda i: len(examples[i]), reverse=True)[:shots]
    query = max(range(len(demos)), key=lambda i: len(queries[i]))
    prompt = few_shot_prompt(template, [demos[i] for i in longest], demos[query].input)
    return len(tokenizer(prompt)["input_ids"])
