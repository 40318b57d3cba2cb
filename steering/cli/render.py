"""How the `steer` command prints: tables of tasks and verdicts, progress bars, JSON."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from steering.cli.app import State, err
from steering.wire.protocol import TaskInfo, Verdict


def stdout() -> Console:
    """stdout: tables fit the terminal; when piped, a wide console keeps each row on one line."""
    return Console() if sys.stdout.isatty() else Console(width=160)


def emit_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else ""


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _status(info: TaskInfo) -> str:
    colour = {"ready": "green", "failed": "red", "running": "yellow", "pending": "yellow"}[info.status]
    return f"[{colour}]{info.status}[/]"


RATING_STYLE = {
    "better_than_few_shot": "green",
    "as_good_as_few_shot": "cyan",
    "below_few_shot": "yellow",
    "no_effect": "red",
}


def layer_ranges(layers: list[int] | None) -> str:
    """`0-3, 7, 9-11` for [0, 1, 2, 3, 7, 9, 10, 11]: a vector on all thirty layers reads `0-29`; `-` for none."""
    runs: list[list[int]] = []
    for layer in sorted(set(layers or [])):
        if runs and layer == runs[-1][1] + 1:
            runs[-1][1] = layer
        else:
            runs.append([layer, layer])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs) or "-"


def _pct(value: float) -> str:
    return f"{100 * value:.0f} %"


def _shots(verdict: Verdict) -> str:
    return f"{verdict.few_shot_k}-shot" if verdict.few_shot_k else "few-shot"


def verdict_scores(verdict: Verdict) -> str:
    """`steered 40 % · 10-shot 60 % · zero-shot 0 % (exact match, 20 held out, gaps under 29 points may be chance)`."""
    metric = "exact match" if verdict.metric == "exact" else "first token"
    where = f"{verdict.held_out} held out" if verdict.held_out else "on training demonstrations"
    if verdict.margin is not None:
        where += f", gaps under {100 * verdict.margin:.0f} points may be chance"
    return (
        f"steered {_pct(verdict.steered)} · {_shots(verdict)} {_pct(verdict.few_shot)} · "
        f"zero-shot {_pct(verdict.zero_shot)} ({metric}, {where})"
    )


def verdict_cell(verdict: Verdict | None) -> str:
    """The list's column: `below: 40 % vs 10-shot 60 %`, coloured by the rating."""
    if verdict is None:
        return "-"
    label = {
        "better_than_few_shot": "better",
        "as_good_as_few_shot": "as good",
        "below_few_shot": "below",
        "no_effect": "no effect",
    }[verdict.rating]
    style = RATING_STYLE[verdict.rating]
    return f"[{style}]{label}[/]: {_pct(verdict.steered)} vs {_shots(verdict)} {_pct(verdict.few_shot)}"


def _piece(text: str) -> str:
    """A stop string or delimiter as typed: bare when one visible character, else quoted (`"\\n"`, `" -"`)."""
    return text if len(text) == 1 and text.isprintable() and not text.isspace() else json.dumps(text)


def answer_end_text(rule: dict[str, Any] | None) -> str:
    """The learned answer-end rule in one line: `stop "\\n" · at , ; . · max 1 word · max 10 tokens`."""
    rule = rule or {}
    parts: list[str] = []
    if rule.get("stop"):
        parts.append("stop " + " ".join(_piece(s) for s in rule["stop"]))
    if rule.get("delimiters"):
        parts.append("at " + " ".join(_piece(d) for d in rule["delimiters"]))
    for key, unit in (("max_words", "word"), ("max_chars", "char"), ("max_tokens", "token")):
        value = rule.get(key)
        if isinstance(value, int):
            parts.append(f"max {value} {unit}{'' if value == 1 else 's'}")
    return " · ".join(parts) or "-"


def tasks_table(tasks: list[TaskInfo]) -> Table:
    table = Table(show_lines=False, header_style="bold")
    for column in ("id", "name", "method", "status", "verdict", "layers", "strength", "demos", "created"):
        table.add_column(column, no_wrap=column in ("id", "created"))
    for t in tasks:
        table.add_row(
            t.id,
            escape(t.name or ""),
            t.method,
            _status(t),
            verdict_cell(t.verdict),
            layer_ranges(t.layers),
            fmt(t.default_strength),
            str(t.num_demonstrations),
            _when(t.created_at),
        )
    return table


def task_table(info: TaskInfo) -> Table:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    rows: list[tuple[str, str]] = [
        ("id", info.id),
        ("name", escape(info.name or "")),
        ("method", info.method),
        ("status", _status(info)),
        ("layers", layer_ranges(info.layers)),
        ("default strength", fmt(info.default_strength)),
        ("demonstrations", str(info.num_demonstrations)),
        ("created", _when(info.created_at)),
    ]
    if info.verdict is not None:
        style = RATING_STYLE[info.verdict.rating]
        rows.append(("verdict", f"[{style}]{escape(info.verdict.summary)}[/]"))
        rows.append(("scores", verdict_scores(info.verdict)))
        if info.verdict.advice:
            rows.append(("advice", f"[yellow]{escape(info.verdict.advice)}[/]"))
    if info.answer_end:
        rows.append(("answers end", escape(answer_end_text(info.answer_end))))
    if info.template is not None:
        rows.append(("query template", escape(repr(info.template.query))))
    if info.options:
        rows.append(("options", escape(json.dumps(info.options, sort_keys=True))))
    for key, value in (info.metrics or {}).items():
        if not isinstance(value, (list, dict)):
            rows.append((key, fmt(value)))
    if info.progress:
        rows.append(("progress", progress_text(info)))
    if info.error:
        rows.append(("error", f"[red]{escape(info.error)}[/]"))
    for key, value in rows:
        table.add_row(key, value)
    return table


def progress_text(info: TaskInfo) -> str:
    """`running: training 40/200 loss 1.234` from a task's status and progress fields."""
    progress = info.progress or {}
    parts = [info.status]
    if progress.get("stage"):
        parts[0] += ":"
        parts.append(str(progress["stage"]))
    if progress.get("step") is not None:
        parts.append(f"{progress['step']}/{progress.get('steps', '?')}")
    if isinstance(progress.get("loss"), (int, float)):
        parts.append(f"loss {progress['loss']:.4f}")
    return " ".join(parts)


def show_task(state: State, info: TaskInfo) -> None:
    if state.json:
        emit_json(info.model_dump(mode="json"))
    else:
        stdout().print(task_table(info))


@contextmanager
def progress_bar(enabled: bool) -> Iterator[Callable[[TaskInfo], None]]:
    """A rich progress bar on stderr fed with task infos (status, stage, step/steps, loss)."""
    if not enabled:
        yield lambda info: None
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task: TaskID = bar.add_task("pending", total=None)

        def update(info: TaskInfo) -> None:
            progress = info.progress or {}
            steps, step = progress.get("steps"), progress.get("step")
            if isinstance(steps, int) and isinstance(step, int):
                bar.update(task, description=progress_text(info), total=steps, completed=step)
            else:
                bar.update(task, description=progress_text(info))

        yield update
