"""The mixed workload of `make bench-load`: open-loop (Poisson) arrivals of requests that differ in prompt,
answer length, task, strength and streaming, drawn from a seed so every scheduler gets the same trace."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from steering.wire.protocol import Demonstration

SHORT_TOKENS = 4
MEDIUM_TOKENS = (16, 48)
LONG_TOKENS = (128, 256)
# Kind of answer: (share of requests, kind)
ANSWER_MIX = ((0.45, "short"), (0.35, "medium"), (0.20, "long"))
FEW_SHOT_SHARE = 0.25  # prompts carrying 10 demonstrations instead of a zero-shot query
STREAM_SHARE = 0.25
UNSTEERED_SHARE = 0.1  # zero-shot requests without steering
STRENGTHS = (0.5, 1.0, 1.5)
TOPICS = ("a lighthouse", "a lost key", "the first snow", "a market day", "an old clock", "a river", "a robot")


@dataclass(frozen=True)
class Request:
    at: float  # seconds after the trace starts
    kind: str  # short | medium | long
    body: dict[str, Any]

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    @property
    def steered(self) -> bool:
        return bool(self.body.get("steering"))


@dataclass(frozen=True)
class Task:
    """A registered task: its id and demonstrations (few-shot prompts are built from them)."""

    id: str
    name: str
    demos: Sequence[Demonstration]


def query(word: str) -> str:
    return f"Q: {word}\nA:"


def few_shot(task: Task, word: str, shots: int = 10) -> str:
    return "".join(f"Q: {d.input}\nA: {d.output}\n\n" for d in task.demos[:shots]) + query(word)


def short_request(task: Task, word: str, strength: float = 1.0, stream: bool = False) -> dict[str, Any]:
    """A steered zero-shot query for a one-word answer: the request the probes time."""
    body = {
        "prompt": query(word),
        "steering": [{"task": task.id, "strength": strength}],
        "max_new_tokens": SHORT_TOKENS,
        "stop": ["\n"],
    }
    return {**body, "stream": True} if stream else body


def long_request(word: str, max_new_tokens: int = 128) -> dict[str, Any]:
    return {"prompt": f"Write a long story about {word}.\n", "max_new_tokens": max_new_tokens, "stop": []}


def _body(rng: random.Random, kind: str, tasks: Sequence[Task], words: Sequence[str]) -> dict[str, Any]:
    task, word = rng.choice(tasks), rng.choice(words)
    if kind == "short":
        body = short_request(task, word, rng.choice(STRENGTHS))
        if rng.random() < UNSTEERED_SHARE:
            body["steering"] = []
    else:
        low, high = MEDIUM_TOKENS if kind == "medium" else LONG_TOKENS
        if rng.random() < FEW_SHOT_SHARE:
            body = {"prompt": few_shot(task, word), "max_new_tokens": rng.randint(low, high), "stop": []}
        else:
            body = long_request(rng.choice(TOPICS), rng.randint(low, high))
        if rng.random() > UNSTEERED_SHARE:
            body["steering"] = [{"task": rng.choice(tasks).id, "strength": rng.choice(STRENGTHS)}]
    if rng.random() < STREAM_SHARE:
        body["stream"] = True
    return body


def make_trace(rate: float, duration_s: float, tasks: Sequence[Task], words: Sequence[str], seed: int) -> list[Request]:
    """Poisson arrivals at `rate` per second for `duration_s` seconds (at least one request).

    Contents and gaps come from separate streams of the seed: traces at different rates hold the same
    requests in the same order, only closer together."""
    contents, gaps = random.Random(seed), random.Random(seed + 1)
    out: list[Request] = []
    at = gaps.expovariate(1.0) / rate
    while at < duration_s or not out:
        draw, kind = contents.random(), ANSWER_MIX[-1][1]
        for share, name in ANSWER_MIX:
            if draw < share:
                kind = name
                break
            draw -= share
        out.append(Request(at, kind, _body(contents, kind, tasks, words)))
        at += gaps.expovariate(1.0) / rate
    return out
