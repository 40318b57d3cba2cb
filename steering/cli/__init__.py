"""`steer`: the steering service from the command line (a thin layer over `steering.client`).

    steer serve
    steer tasks register antonyms.txt --method task_vector --name antonyms
    steer generate --task antonyms:1.5 --input hot   # a task by its name (or its id), at strength 1.5
    steer export task-... --format safetensors -o antonyms.safetensors

Human output by default (tables on stdout, progress and notes on stderr); `--json` for scripts.
"""

from __future__ import annotations

from steering.cli import generate, serve, tasks, vectors  # noqa: F401  (each module adds its commands)
from steering.cli.app import (
    EPILOG,
    EXIT_AUTH,
    EXIT_ERROR,
    EXIT_NOT_FOUND,
    EXIT_NOT_READY,
    EXIT_OK,
    EXIT_USAGE,
    app,
    exit_code,
    handled,
)
from steering.cli.generate import parse_task
from steering.cli.render import answer_end_text, layer_ranges, task_table, tasks_table
from steering.eval.command import eval_command

app.command("eval", epilog=EPILOG)(handled(eval_command))

__all__ = [
    "EXIT_AUTH",
    "EXIT_ERROR",
    "EXIT_NOT_FOUND",
    "EXIT_NOT_READY",
    "EXIT_OK",
    "EXIT_USAGE",
    "answer_end_text",
    "app",
    "exit_code",
    "layer_ranges",
    "main",
    "parse_task",
    "task_table",
    "tasks_table",
]


def main() -> None:
    """The `steer` console script."""
    app(prog_name="steer")
