"""Where an answer ends, learned from a task's demonstrations.

A steered zero-shot answer often starts right and does not stop: `apple, pear, plum` for a task whose
answers are one word. The demonstrations say what an answer looks like, so each task learns a rule
from its outputs once, when its vector is computed:

- `stop`: the template's own stop strings (where the next part of a few-shot prompt would begin);
- `delimiters`: punctuation that no demonstrated answer contains ends the answer once it has begun;
- `max_words`: no demonstrated answer has more whitespace-separated words (one more when they vary);
- `max_chars`: every demonstrated answer has exactly this many characters (single letters, codes);
- `max_tokens`: a bound on generation, twice the longest answer's tokens plus two.

The rule is applied by default to requests that name a task and give no stop strings of their own
(`stop: []` turns it off). Leading whitespace never ends an answer: the rule starts where it begins.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from steering.tasks.templates import stop_strings
from steering.wire.protocol import MAX_STOP_CHARS, MAX_STOP_STRINGS, Demonstration, Template

# Punctuation that separates items, clauses or remarks; a delimiter only when no answer contains it.
DELIMITER_CANDIDATES: tuple[str, ...] = ("\n", ",", ";", ".", "!", "?", ":", "(", ")", "[", "]", '"', "|", " -", "=")
MIN_OUTPUTS = 4  # fewer demonstrations say too little about answers to cut them
MIN_OUTPUTS_FOR_LENGTH = 8  # a fixed answer length is inferred from at least this many answers
_WORD = re.compile(r"\S+")
# A stored rule (an imported file's, or one read back from the store) obeys a request's bounds: every stop string
# and delimiter is searched for in the text after each generated token.
EndString = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]
MAX_ANSWER_LENGTH = 1_000_000  # words, characters or tokens: more than any generation


class AnswerEnd(BaseModel):
    """The rule; `cut` says where it ends a text."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    stop: list[EndString] = Field(
        default_factory=list, max_length=MAX_STOP_STRINGS, description="End the answer wherever they appear."
    )
    delimiters: list[EndString] = Field(
        default_factory=list, max_length=len(DELIMITER_CANDIDATES), description="End the answer once it has begun."
    )
    max_words: int | None = Field(None, ge=1, le=MAX_ANSWER_LENGTH)
    max_chars: int | None = Field(None, ge=1, le=MAX_ANSWER_LENGTH)
    max_tokens: int | None = Field(None, ge=1, le=MAX_ANSWER_LENGTH)

    def cut(self, text: str) -> int | None:
        """The index at which the answer in `text` ends, or None while it may go on."""
        ends = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        start = len(text) - len(text.lstrip())
        if start < len(text):
            ends += [i for i in (text.find(d, start + 1) for d in self.delimiters) if i >= 0]
            if self.max_chars is not None and len(text) - start > self.max_chars:
                ends.append(start + self.max_chars)
            if self.max_words is not None:
                words = list(_WORD.finditer(text, start))
                if len(words) >= self.max_words and words[self.max_words - 1].end() < len(text):
                    ends.append(words[self.max_words - 1].end())
        return min(ends) if ends else None

    def apply(self, text: str) -> str:
        """`text` up to where the answer ends."""
        cut = self.cut(text)
        return text if cut is None else text[:cut]

    def hold(self) -> int:
        """Characters a stream keeps back: a stop string or delimiter may still be forming."""
        return max((len(s) for s in (*self.stop, *self.delimiters)), default=1) - 1

    @classmethod
    def combine(cls, rules: Sequence[AnswerEnd]) -> AnswerEnd:
        """One rule for several tasks steering at once: it ends an answer only where every task's rule would."""
        if not rules:
            return cls()
        first = rules[0]

        def loosest(values: list[int | None]) -> int | None:
            return None if any(v is None for v in values) else max(v for v in values if v is not None)

        def shared(lists: list[list[str]]) -> list[str]:
            common = set(lists[0]).intersection(*lists[1:])
            return [s for s in lists[0] if s in common]

        return cls(
            stop=shared([r.stop for r in rules]),
            delimiters=shared([r.delimiters for r in rules]),
            max_words=loosest([r.max_words for r in rules]),
            max_chars=None if len({r.max_chars for r in rules}) > 1 else first.max_chars,
            max_tokens=loosest([r.max_tokens for r in rules]),
        )


def template_end(template: Template) -> AnswerEnd:
    """The rule of a template alone (no demonstrations to learn from)."""
    return AnswerEnd(stop=stop_strings(template))


def learn_answer_end(
    template: Template,
    demonstrations: Sequence[Demonstration],
    count_tokens: Callable[[Demonstration], int] | None = None,
) -> AnswerEnd:
    """The rule the demonstrations' outputs imply; `count_tokens` (an answer's tokens) sets `max_tokens`."""
    outputs = [d.output.strip() for d in demonstrations]
    if len(outputs) < MIN_OUTPUTS or not all(outputs):
        return template_end(template)
    words = [len(o.split()) for o in outputs]
    lengths = {len(o) for o in outputs}
    max_tokens = None
    if count_tokens is not None:
        max_tokens = 2 * max(count_tokens(d) for d in demonstrations) + 2
    stop = stop_strings(template)
    return AnswerEnd(
        stop=stop,
        delimiters=[d for d in DELIMITER_CANDIDATES if d not in stop and not any(d in o for o in outputs)],
        max_words=max(words) + (0 if min(words) == max(words) else 1),
        max_chars=lengths.pop() if len(lengths) == 1 and len(outputs) >= MIN_OUTPUTS_FOR_LENGTH else None,
        max_tokens=max_tokens,
    )
