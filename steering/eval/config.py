"""What `steer eval` evaluates: the suite's configuration and the parsing of its command-line lists."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

DEFAULT_TASKS: tuple[str, ...] = (
    "antonyms",
    "country_capital",
    "english_french",
    "present_past",
    "singular_plural",
    "uppercase",
    "first_letter",
    "first_item",
)
DEFAULT_METHODS: tuple[str, ...] = ("task_vector", "function_vector", "icv", "soft_injection")
DEFAULT_MULTIPLES: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0)


@dataclass
class EvalConfig:
    """What to evaluate; `options` maps a method to its option overrides."""

    model: str = "default"
    url: str | None = None
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    k_shot: int = 10
    n_demos: int = 40
    n_test: int = 20
    seed: int = 0
    multiples: list[float] = field(default_factory=lambda: list(DEFAULT_MULTIPLES))
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    max_new_tokens: int = 16
    tasks_dir: str | None = None  # read the tasks from this folder's .jsonl files instead of the packaged ones

    def method_options(self, method: str) -> dict[str, Any]:
        """The options sent with a method: the overrides, with the suite's seed unless one is given."""
        return {"seed": self.seed, **self.options.get(method, {})}


def parse_list(text: str, known: Sequence[str], what: str) -> list[str]:
    """`a,b,c` (or `all`) checked against the known names."""
    if text.strip() == "all":
        return list(known)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ValueError(f"unknown {what} {', '.join(unknown) or '(none given)'}; choose from {', '.join(known)}")
    return names


def parse_method_options(pairs: Sequence[str], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """`method.key=value` pairs; values are read as JSON when they parse (numbers, true, lists), else as text."""
    options: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        target, sep, raw = pair.partition("=")
        method, dot, key = target.strip().partition(".")
        if not sep or not dot or not key:
            raise ValueError(f"expected method.key=value, got {pair!r}")
        if method not in methods:
            raise ValueError(f"option {pair!r} names method {method!r}, which is not evaluated")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        options.setdefault(method, {})[key] = value
    return options


def parse_multiples(text: str) -> list[float]:
    values = sorted({float(v) for v in text.split(",") if v.strip()})
    if not values:
        raise ValueError("give at least one strength multiple")
    return values


def reproduce_command(config: EvalConfig) -> str:
    """The `steer eval` command line that runs this config."""
    parts = ["steer eval", f"--url {config.url}" if config.url else f"--model {config.model}"]
    if config.tasks_dir is not None:
        parts.append(f"--tasks-dir {config.tasks_dir}")
    parts += [f"--tasks {','.join(config.tasks)}", f"--methods {','.join(config.methods) or 'none'}"]
    parts += [f"--k-shot {config.k_shot}", f"--demos {config.n_demos}", f"--test {config.n_test}"]
    parts += [f"--seed {config.seed}", f"--multiples {','.join(f'{m:g}' for m in config.multiples)}"]
    parts.append(f"--max-new-tokens {config.max_new_tokens}")
    for method, options in config.options.items():
        parts += [
            f"--option {method}.{key}={json.dumps(value, separators=(',', ':'))}" for key, value in options.items()
        ]
    return " ".join(parts)
