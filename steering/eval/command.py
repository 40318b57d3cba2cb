"""`steer eval`: the command that runs the suite and writes its outputs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from steering.eval.config import (
    DEFAULT_METHODS,
    DEFAULT_MULTIPLES,
    DEFAULT_TASKS,
    EvalConfig,
    parse_list,
    parse_method_options,
    parse_multiples,
)
from steering.eval.task_source import available_tasks
from steering.wire.method_names import METHOD_NAMES


def eval_command(
    ctx: typer.Context,
    model: Annotated[str, typer.Option(help="In-process model: default, tiny:<family>, a hub id or a folder.")] = (
        "default"
    ),
    url: Annotated[
        str | None, typer.Option("--url", help="Evaluate through a running server at URL instead of in-process.")
    ] = None,
    tasks: Annotated[
        str | None,
        typer.Option(help="Comma-separated tasks, or 'all' [default: the development suite; with --tasks-dir, all]."),
    ] = None,
    tasks_dir: Annotated[
        Path | None,
        typer.Option(
            "--tasks-dir", help="Read the tasks from this folder's <name>.jsonl files, e.g. steering/eval/unseen."
        ),
    ] = None,
    methods: Annotated[
        str, typer.Option(help="Comma-separated steering methods; 'none' scores only zero-shot and k-shot prompting.")
    ] = ",".join(DEFAULT_METHODS),
    k_shot: Annotated[int, typer.Option("--k-shot", min=0, help="Demonstrations in the in-context baseline.")] = 10,
    demos: Annotated[int, typer.Option("--demos", min=1, help="Demonstrations per task.")] = 40,
    test: Annotated[int, typer.Option("--test", min=1, help="Held-out test items per task.")] = 20,
    seed: Annotated[int, typer.Option(help="Seed of the split, the k-shot prompts and the methods.")] = 0,
    out: Annotated[Path, typer.Option("--out", "-O", help="Folder for results.json/.md and the plots.")] = Path(
        "eval-results"
    ),
    option: Annotated[
        list[str] | None, typer.Option("--option", "-o", help="A method option, method.key=value (repeatable).")
    ] = None,
    multiples: Annotated[str, typer.Option(help="Strength sweep: multiples of the chosen strength.")] = ",".join(
        f"{m:g}" for m in DEFAULT_MULTIPLES
    ),
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Token limit of the exact-match generations.")] = 16,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
) -> None:
    """Accuracy of zero-shot, k-shot and every steering method on held-out items; writes JSON, Markdown and plots."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts: idle threads must not spin
    # Imported here, not at the top: the suite pulls in torch, and every other `steer` command starts without it.
    from steering.eval.backends import open_backend
    from steering.eval.progress import RichReporter
    from steering.eval.report import errors_list, markdown_summary, write_outputs
    from steering.eval.suite import run_suite

    method_list = [] if methods.strip() == "none" else parse_list(methods, METHOD_NAMES, "method")
    default_tasks = "all" if tasks_dir is not None else ",".join(DEFAULT_TASKS)
    config = EvalConfig(
        model=model,
        url=url,
        tasks=parse_list(tasks or default_tasks, available_tasks(tasks_dir), "task"),
        methods=method_list,
        k_shot=k_shot,
        n_demos=demos,
        n_test=test,
        seed=seed,
        multiples=parse_multiples(multiples),
        options=parse_method_options(option or [], method_list),
        max_new_tokens=max_new_tokens,
        tasks_dir=str(tasks_dir) if tasks_dir is not None else None,
    )
    api_key = getattr(ctx.obj, "api_key", None)
    with open_backend(config, api_key) as backend:
        if progress:
            with RichReporter() as reporter:
                result = run_suite(config, backend, reporter)
        else:
            result = run_suite(config, backend)
    result["meta"]["command"] += f" --out {out}"
    paths = write_outputs(result, out)
    typer.echo(markdown_summary(result))
    typer.echo("wrote " + ", ".join(str(p) for p in paths), err=True)
    if errors_list(result):
        typer.echo("some methods failed:\n" + "\n".join(errors_list(result)), err=True)
        raise typer.Exit(1)
