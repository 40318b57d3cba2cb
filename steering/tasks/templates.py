"""Render demonstrations and queries with a task's template."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from steering.wire.protocol import MAX_TEMPLATE_CHARS, Demonstration, Template

DEFAULT_TEMPLATE = Template()


def render_example(template: Template, demo: Demonstration) -> str:
    return template.example.replace("{input}", demo.input).replace("{output}", demo.output)


def _query(template: Template, text: str) -> str:
    return template.query.replace("{input}", text)


def render_query(template: Template, text: str) -> str:
    """A zero-shot prompt: the template's prefix, then its query."""
    return template.prefix + _query(template, text)


def few_shot_prompt(template: Template, demos: Sequence[Demonstration], query: str) -> str:
    """The prefix, then k demonstrations and the query joined by the template's separator."""
    parts = [render_example(template, d) for d in demos]
    parts.append(_query(template, query))
    return template.prefix + template.separator.join(parts)


def answer_text(template: Template, demo: Demonstration) -> str:
    """What follows the rendered query in a rendered example: ' cold' for 'Q: hot\\nA:' -> 'Q: hot\\nA: cold'."""
    example = render_example(template, demo)
    query = _query(template, demo.input)
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


class NoChatTemplate(ValueError):
    """The tokenizer has no chat template to render a task in."""


# Marker texts a chat template passes through unchanged (no spaces to strip, no special characters).
_IN1, _OUT1, _IN2 = "INPUTaaaONE", "OUTPUTbbbONE", "INPUTcccTWO"


def chat_template(tokenizer: Any) -> Template:
    """The model's chat template as a task template: the input is the user's message, the output the assistant's.

    `prefix` is what the chat template writes before the first user turn (a system turn, a BOS text), the query
    a user turn and the generation prompt, an example the same answered and closed, so that a zero-shot query is
    exactly the chat prompt of one user message and a few-shot prompt a valid multi-turn chat. A chat template
    whose turns cannot be told apart that way gives whole one-turn chats, one after the other."""
    if not getattr(tokenizer, "chat_template", None):
        raise NoChatTemplate("this model has no chat template")

    def render(messages: list[tuple[str, str]], generation_prompt: bool) -> str:
        chat = [{"role": role, "content": content} for role, content in messages]
        return tokenizer.apply_chat_template(chat, add_generation_prompt=generation_prompt, tokenize=False)

    try:
        one = render([("user", _IN1)], True)
        answered = render([("user", _IN1), ("assistant", _OUT1)], False)
        two = render([("user", _IN1), ("assistant", _OUT1), ("user", _IN2)], True)
    except Exception as exc:  # a template that raises (jinja errors, role checks)
        raise NoChatTemplate(f"this model's chat template does not render a user turn: {exc}") from exc
    if one.count(_IN1) != 1 or answered.count(_OUT1) != 1:
        raise NoChatTemplate("this model's chat template does not show a user message as written")
    head, generation = one.split(_IN1)
    end_of_turn = answered.split(_OUT1)[1]
    if len(one) + len(end_of_turn) > MAX_TEMPLATE_CHARS:
        raise NoChatTemplate(
            f"this model's chat template writes {len(one) + len(end_of_turn)} characters around one answered message; "
            f"a task's template holds at most {MAX_TEMPLATE_CHARS}"
        )
    single = Template(
        query=head + "{input}" + generation,
        example=head + "{input}" + generation + "{output}" + end_of_turn,
        separator="",
    )
    turns = two.split(_OUT1)[1].split(_IN2)[0] if two.count(_OUT1) == two.count(_IN2) == 1 else ""
    user_head = turns[len(end_of_turn) :] if turns.startswith(end_of_turn) else ""
    if user_head and head.endswith(user_head):
        multi = Template(
            prefix=head[: len(head) - len(user_head)],
            query=user_head + "{input}" + generation,
            example=user_head + "{input}" + generation + "{output}" + end_of_turn,
            separator="",
        )
        shot = Demonstration(input=_IN1, output=_OUT1)
        if render_query(multi, _IN2) == render([("user", _IN2)], True) and few_shot_prompt(multi, [shot], _IN2) == two:
            return multi
    return single
