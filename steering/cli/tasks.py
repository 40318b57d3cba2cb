"""`steer tasks register|list|show|delete`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from steering.cli.app import EPILOG, JsonFlag, err, handled, state_of, tasks_app
from steering.cli.render import emit_json, progress_bar, show_task, stdout, tasks_table
from steering.client import TaskFailed
from steering.tasks.datasets import read_demonstrations
from steering.wire.method_names import METHOD_NAMES
from steering.wire.protocol import TaskList


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """`k=v` pairs; each value is read as JSON when it parses (numbers, true, lists), else as a string."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected key=value, got {pair!r}", param_hint="--option")
        try:
            options[key.strip()] = json.loads(raw)
        except ValueError:
            options[key.strip()] = raw
    return options


@tasks_app.command("register", epilog=EPILOG)
@handled
def tasks_register(
    ctx: typer.Context,
    file: Annotated[str, typer.Argument(help="Demonstrations: `input -> output` lines or JSONL; `-` for stdin.")],
    method: Annotated[str, typer.Option("--method", "-m", help=f"One of {', '.join(METHOD_NAMES)}.")] = "auto",
    name: Annotated[str | None, typer.Option(help="A name to recognise the task by.")] = None,
    option: Annotated[
        list[str] | None, typer.Option("--option", "-o", help="A method option, key=value (repeatable).")
    ] = None,
    chat: Annotated[
        bool, typer.Option("--chat", help="Compute the vector on the model's chat template (for chat requests).")
    ] = False,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Return at once instead of waiting for ready.")] = False,
    timeout: Annotated[float | None, typer.Option(help="Give up waiting after this many seconds.")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Register a task from a file of demonstrations and (unless --no-wait) wait until it is ready."""
    state = state_of(ctx, json_out)
    if method not in METHOD_NAMES:
        raise typer.BadParameter(f"choose one of {', '.join(METHOD_NAMES)}", param_hint="--method")
    options = parse_options(option or [])
    demos = read_demonstrations(sys.stdin.read() if file == "-" else Path(file))
    if not demos:
        raise ValueError(f"{file} holds no demonstrations")
    with state.client() as client:
        info = client.register(demos, method=method, name=name, template="chat" if chat else None, options=options)
        if not no_wait and info.status not in ("ready", "failed"):
            with progress_bar(not state.json) as update:
                info = client.wait(info.id, timeout=timeout, poll_interval=0.25, on_progress=update)
        if info.status == "failed":
            raise TaskFailed(info)
    show_task(state, info)


@tasks_app.command("list", epilog=EPILOG)
@handled
def tasks_list(ctx: typer.Context, json_out: JsonFlag = False) -> None:
    """List your tasks, newest first."""
    state = state_of(ctx, json_out)
    with state.client() as client:
        tasks = client.list()
    if state.json:
        emit_json(TaskList(tasks=tasks, total=len(tasks)).model_dump(mode="json"))
    elif not tasks:
        err.print("no tasks yet: register one with `steer tasks register FILE`")
    else:
        stdout().print(tasks_table(tasks))


@tasks_app.command("show", epilog=EPILOG)
@handled
def tasks_show(
    ctx: typer.Context,
    task_id: Annotated[str, typer.Argument(help="The task's id or name.")],
    json_out: JsonFlag = False,
) -> None:
    """Show one task: status, progress, chosen layers and strength, metrics."""
    state = state_of(ctx, json_out)
    with state.client() as client:
        info = client.get(task_id)
    show_task(state, info)


@tasks_app.command("delete", epilog=EPILOG)
@handled
def tasks_delete(
    ctx: typer.Context,
    task_id: Annotated[str, typer.Argument(help="The task's id or name.")],
    json_out: JsonFlag = False,
) -> None:
    """Delete a task and its vector."""
    state = state_of(ctx, json_out)
    with state.client() as client:
        client.delete(task_id)
    if state.json:
        emit_json({"id": task_id, "deleted": True})
    else:
        err.print(f"deleted {task_id}")
