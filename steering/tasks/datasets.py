"""The packaged in-context tasks, and readers for user-supplied demonstration files.

Each packaged task is `data/<name>.jsonl` (beside this module): one `{"input": ..., "output": ...}` object per line.
User files may be that JSONL format or plain text with one `input -> output` pair per line.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

from steering.wire.protocol import Demonstration

TASKS_DIR = Path(__file__).parent / "data"
ARROW = "->"


def task_names() -> list[str]:
    """Sorted names of the packaged tasks."""
    return sorted(p.stem for p in TASKS_DIR.glob("*.jsonl"))


def load_task(name: str) -> list[Demonstration]:
    """All items of a packaged task, in file order. Raises KeyError for an unknown name."""
    known = task_names()
    if name not in known:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(known)}")
    return read_demonstrations(TASKS_DIR / f"{name}.jsonl")


def split_task(
    items: Sequence[Demonstration], n_demos: int, n_test: int, seed: int = 0
) -> tuple[list[Demonstration], list[Demonstration]]:
    """Disjoint (demonstrations, test items), drawn from a deterministic shuffle of `items`."""
    if n_demos < 0 or n_test < 0:
        raise ValueError("n_demos and n_test must be >= 0")
    if n_demos + n_test > len(items):
        raise ValueError(f"asked for {n_demos} demos + {n_test} test items but only {len(items)} exist")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    demos = [items[i] for i in order[:n_demos]]
    test = [items[i] for i in order[n_demos : n_demos + n_test]]
    return demos, test


def read_demonstrations(source: str | Path) -> list[Demonstration]:
    """Parse demonstrations from a file path or from text.

    A `Path`, or a string naming an existing file, is read from disk; any other string is parsed as
    the text itself (a one-line string that is neither a pair nor a file raises FileNotFoundError).
    Each non-blank line not starting with '#' is either a JSON object with string fields "input" and
    "output" (other keys are ignored), or `input -> output` (split at the first "->", both sides
    stripped). Bad lines raise ValueError naming the line number.
    """
    text = _read_source(source)
    demos: list[Demonstration] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            demos.append(_parse_line(line))
        except ValueError as exc:
            raise ValueError(f"line {lineno}: {exc}: {_clip(line)}") from None
    return demos


def _read_source(source: str | Path) -> str:
    if isinstance(source, Path):
        return source.read_text(encoding="utf-8")
    if "\n" not in source and len(source) < 4096:
        try:
            path = Path(source)
            if path.is_file():
                return path.read_text(encoding="utf-8")
        except OSError:
            pass
        stripped = source.strip()
        if stripped and ARROW not in stripped and not stripped.startswith(("{", "#")):
            raise FileNotFoundError(f"no such file: {source!r}")
    return source


def _parse_line(line: str) -> Demonstration:
    if line.startswith("{"):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"invalid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise ValueError("expected a JSON object")
        inp, out = obj.get("input"), obj.get("output")
        if not isinstance(inp, str) or not isinstance(out, str):
            raise ValueError('expected string fields "input" and "output"')
    else:
        if ARROW not in line:
            raise ValueError(f'expected a JSON object or "input {ARROW} output"')
        inp, out = (part.strip() for part in line.split(ARROW, 1))
    if not inp.strip() or not out.strip():
        raise ValueError("empty input or output")
    return Demonstration(input=inp, output=out)


def _clip(line: str, limit: int = 80) -> str:
    return line if len(line) <= limit else line[: limit - 3] + "..."
