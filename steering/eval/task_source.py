"""Where `steer eval` reads its tasks: the packaged ones, or every `<name>.jsonl` of a folder (`--tasks-dir`)."""

from __future__ import annotations

from pathlib import Path

from steering.tasks.datasets import load_task, read_demonstrations, task_names
from steering.wire.protocol import Demonstration

# Tasks built from sources the project had not looked at, measured only at the end (see its README).
UNSEEN_DIR = Path(__file__).parent / "unseen"


def available_tasks(tasks_dir: str | Path | None) -> list[str]:
    """Sorted task names: the packaged tasks, or the `.jsonl` files of `tasks_dir`."""
    if tasks_dir is None:
        return task_names()
    folder = Path(tasks_dir)
    if not folder.is_dir():
        raise ValueError(f"--tasks-dir {folder} is not a folder")
    names = sorted(p.stem for p in folder.glob("*.jsonl"))
    if not names:
        raise ValueError(f"--tasks-dir {folder} holds no .jsonl task")
    return names


def load_eval_task(name: str, tasks_dir: str | Path | None) -> list[Demonstration]:
    """All items of `name`, from `tasks_dir` when given, else the packaged task."""
    if tasks_dir is None:
        return load_task(name)
    if name not in available_tasks(tasks_dir):
        raise KeyError(f"no task {name!r} in {tasks_dir}")
    return read_demonstrations(Path(tasks_dir) / f"{name}.jsonl")
