"""`steer`: the steering service from the command line (a thin layer over `steering.client`).

    steer serve
    steer tasks register antonyms.txt --method task_vector --name antonyms
    steer generate --task antonyms:1.5 --input hot   # a task by its name (or its id), at strength 1.5
    steer export task-... --format safetensors -o antonyms.safetensors

Human output by default (tables on stdout, progress and notes on stderr); `--json` for scripts.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from steering.client import (
    DEFAULT_URL,
    BadRequest,
    Client,
    Conflict,
    Forbidden,
    NotFound,
    SteeringError,
    TaskFailed,
    TooLarge,
    Unauthorized,
    WaitTimeout,
)
from steering.datasets import read_demonstrations
from steering.eval.command import eval_command
from steering.method_names import METHOD_NAMES
from steering.protocol import GenerateResponse, SteeringEntry, TaskInfo, TaskList, Verdict

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_NOT_READY, EXIT_AUTH = 0, 1, 2, 3, 4, 5
EPILOG = (
    "Exit codes: 0 ok; 1 server or other error (also: the server is unreachable, a task failed); "
    "2 usage error or a request the server refused as invalid; 3 task not found; "
    "4 task not ready, conflict (e.g. another model's vector) or a wait that timed out; "
    "5 API key missing or wrong."
)

app = typer.Typer(
    name="steer",
    help="Register few-shot tasks as steering vectors and generate with them.",
    epilog=EPILOG,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals would show the API key
    context_settings={"help_option_names": ["-h", "--help"]},
)
tasks_app = typer.Typer(help="Register, list, show and delete tasks.", epilog=EPILOG, no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")

err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class State:
    url: str = DEFAULT_URL
    api_key: str | None = None
    json: bool = False

    def client(self) -> Client:
        return Client(self.url, self.api_key or "")


JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts) instead of tables.")]


@app.callback()
def _global(
    ctx: typer.Context,
    url: Annotated[str, typer.Option(envvar="STEER_URL", help="The server's base URL.")] = DEFAULT_URL,
    api_key: Annotated[
        str | None, typer.Option(envvar="STEER_API_KEY", help="API key (sent as a Bearer token).", show_default=False)
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    ctx.obj = State(url=url, api_key=api_key, json=json_out)


def _state(ctx: typer.Context, json_out: bool = False) -> State:
    state = ctx.find_object(State) or State()
    if json_out:
        state.json = True
    return state


# ------------------------------------------------------------------------------------------- errors


def exit_code(exc: BaseException) -> int:
    """The documented exit code for an error (see EPILOG)."""
    if isinstance(exc, (Unauthorized, Forbidden)):
        return EXIT_AUTH
    if isinstance(exc, NotFound):
        return EXIT_NOT_FOUND
    if isinstance(exc, (Conflict, WaitTimeout)):
        return EXIT_NOT_READY
    if isinstance(exc, (BadRequest, TooLarge, ValueError, FileNotFoundError)):
        return EXIT_USAGE
    return EXIT_ERROR


def _describe(exc: BaseException, state: State) -> dict[str, Any]:
    if isinstance(exc, httpx.HTTPError):
        return {"type": "connection_error", "message": f"cannot reach the server at {state.url}: {exc}"}
    kind = getattr(exc, "type", None) or type(exc).__name__
    return {"type": kind, "message": getattr(exc, "message", None) or str(exc)}


def handled(func: F) -> F:
    """Run a command, turning client and input errors into a message and a meaningful exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (SteeringError, httpx.HTTPError, ValueError, FileNotFoundError) as exc:
            ctx = kwargs.get("ctx")
            state = _state(ctx) if hasattr(ctx, "find_object") else State()
            error = _describe(exc, state)
            if state.json:
                err.print_json(json.dumps({"error": error}))
            else:
                err.print(f"[bold red]error[/]: {error['message']}", highlight=False, markup=True)
            raise typer.Exit(exit_code(exc)) from None

    return wrapper  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------ output


def _out() -> Console:
    """stdout: tables fit the terminal; when piped, a wide console keeps each row on one line."""
    return Console() if sys.stdout.isatty() else Console(width=160)


def _emit_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else ""


def _fmt(value: Any) -> str:
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
            _fmt(t.default_strength),
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
        ("default strength", _fmt(info.default_strength)),
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
            rows.append((key, _fmt(value)))
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
        _emit_json(info.model_dump(mode="json"))
    else:
        _out().print(task_table(info))


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


# ---------------------------------------------------------------------------------------- commands


@app.command(epilog=EPILOG)
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (STEER_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (STEER_PORT).")] = None,
    model: Annotated[str | None, typer.Option(help="Model: default, tiny:<family>, a hub id or a folder.")] = None,
) -> None:
    """Run the server (`python -m app`) with the settings from the environment and these options."""
    given = {"STEER_HOST": host, "STEER_PORT": None if port is None else str(port), "STEER_MODEL": model}
    env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, **{k: v for k, v in given.items() if v is not None}}
    os.execvpe(sys.executable, [sys.executable, "-m", "app"], env)


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
    state = _state(ctx, json_out)
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
    state = _state(ctx, json_out)
    with state.client() as client:
        tasks = client.list()
    if state.json:
        _emit_json(TaskList(tasks=tasks, total=len(tasks)).model_dump(mode="json"))
    elif not tasks:
        err.print("no tasks yet: register one with `steer tasks register FILE`")
    else:
        _out().print(tasks_table(tasks))


@tasks_app.command("show", epilog=EPILOG)
@handled
def tasks_show(
    ctx: typer.Context,
    task_id: Annotated[str, typer.Argument(help="The task's id or name.")],
    json_out: JsonFlag = False,
) -> None:
    """Show one task: status, progress, chosen layers and strength, metrics."""
    state = _state(ctx, json_out)
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
    state = _state(ctx, json_out)
    with state.client() as client:
        client.delete(task_id)
    if state.json:
        _emit_json({"id": task_id, "deleted": True})
    else:
        err.print(f"deleted {task_id}")


def parse_task(spec: str) -> SteeringEntry:
    """`TASK` or `TASK:STRENGTH`, TASK an id or a name (names hold no ':'; the strength may be negative)."""
    task, sep, strength = spec.rpartition(":")
    if sep and task:
        try:
            return SteeringEntry(task=task, strength=float(strength))
        except ValueError:
            pass
    return SteeringEntry(task=spec)


@app.command(epilog=EPILOG)
@handled
def generate(
    ctx: typer.Context,
    text: Annotated[str | None, typer.Argument(help="A raw prompt, sent as is.", show_default=False)] = None,
    task: Annotated[
        list[str] | None,
        typer.Option("--task", "-t", help="A task (id or name), or TASK:STRENGTH, to steer with (repeatable)."),
    ] = None,
    input_text: Annotated[
        str | None,
        typer.Option("--input", "-i", help="An input, written out with the first task's query template."),
    ] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Tokens to generate at most.")] = None,
    temperature: Annotated[float | None, typer.Option(help="0 means greedy.")] = None,
    top_p: Annotated[float | None, typer.Option(help="Nucleus sampling.")] = None,
    seed: Annotated[int | None, typer.Option(help="Sampling seed.")] = None,
    stop: Annotated[list[str] | None, typer.Option(help="A stop string (repeatable).")] = None,
    stream: Annotated[bool, typer.Option(help="Print tokens as they come.")] = False,
    json_out: JsonFlag = False,
) -> None:
    """Generate, steered by the given tasks: `--input TEXT` (templated) or a raw prompt TEXT."""
    state = _state(ctx, json_out)
    if (text is None) == (input_text is None):
        raise typer.BadParameter("give either --input TEXT or a raw prompt TEXT (not both)")
    kwargs: dict[str, Any] = {
        "input": input_text,
        "steering": [parse_task(t) for t in task or []],
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "seed": seed,
        "stop": stop or None,
    }
    with state.client() as client:
        if stream:
            _stream(client, state, text, kwargs)
        else:
            _print_response(state, client.generate(text, **kwargs))


def _stream(client: Client, state: State, prompt: str | None, kwargs: dict[str, Any]) -> None:
    done: list[GenerateResponse] = []
    for piece in client.stream_generate(prompt, on_done=done.append, **kwargs):
        if state.json:
            typer.echo(json.dumps({"event": "token", "text": piece}, ensure_ascii=False))
        else:
            sys.stdout.write(piece)
            sys.stdout.flush()
    if state.json:
        for response in done:
            typer.echo(json.dumps({"event": "done", **response.model_dump(mode="json")}, ensure_ascii=False))
        return
    sys.stdout.write("\n")
    for response in done:
        _print_summary(response)


def _print_response(state: State, response: GenerateResponse) -> None:
    if state.json:
        _emit_json(response.model_dump(mode="json"))
        return
    typer.echo(response.text)
    _print_summary(response)


def _print_summary(response: GenerateResponse) -> None:
    steering = ", ".join(f"{e.task}@{_fmt(e.strength)}" for e in response.steering) or "none"
    seconds = response.timing.get("request_s")
    took = f", {seconds:.2f} s" if seconds is not None else ""
    err.print(
        f"[dim]{response.usage.completion_tokens} tokens, {response.finish_reason}{took}; steering: {steering}[/]",
        highlight=False,
    )


@app.command("export", epilog=EPILOG)
@handled
def export(
    ctx: typer.Context,
    task_id: Annotated[str, typer.Argument(help="The task's id or name.")],
    format: Annotated[
        str | None, typer.Option("--format", "-f", help="safetensors or gguf (default: from -o's suffix).")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="The file to write (default: ID.FORMAT).")
    ] = None,
    drop_layer_zero: Annotated[bool, typer.Option(help="GGUF: leave out layer 0 (llama.cpp cannot steer it).")] = False,
    json_out: JsonFlag = False,
) -> None:
    """Download a task's vector as safetensors (any method) or a GGUF control vector (llama.cpp, repeng)."""
    state = _state(ctx, json_out)
    fmt = format or (output.suffix.lstrip(".").lower() if output is not None else "") or "safetensors"
    if fmt not in ("safetensors", "gguf"):
        raise typer.BadParameter("choose safetensors or gguf", param_hint="--format")
    path = output or Path(f"{task_id}.{fmt}")
    with state.client() as client:
        data = client.export_vector(task_id, fmt, drop_layer_zero=drop_layer_zero)  # type: ignore[arg-type]
    path.write_bytes(data)
    if state.json:
        _emit_json({"id": task_id, "format": fmt, "path": str(path), "bytes": len(data)})
    else:
        err.print(f"wrote {len(data)} bytes ({fmt}) to {path}")


@app.command("import", epilog=EPILOG)
@handled
def import_(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="A .safetensors vector (from `steer export`) or a GGUF control vector.")],
    name: Annotated[str | None, typer.Option(help="A name for the new task.")] = None,
    format: Annotated[
        str | None, typer.Option("--format", "-f", help="safetensors or gguf (default: from the suffix or the bytes).")
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """Create a ready task from a vector file."""
    state = _state(ctx, json_out)
    if format not in (None, "safetensors", "gguf"):
        raise typer.BadParameter("choose safetensors or gguf", param_hint="--format")
    with state.client() as client:
        info = client.import_vector(file, format=format, name=name)  # type: ignore[arg-type]
    show_task(state, info)


app.command("eval", epilog=EPILOG)(handled(eval_command))


def main() -> None:
    """The `steer` console script."""
    app(prog_name="steer")


if __name__ == "__main__":
    main()
