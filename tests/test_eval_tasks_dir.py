"""`steer eval --tasks-dir`: tasks read from a folder, and the unseen set kept out of the packaged suite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from steering.cli import app
from steering.eval.config import EvalConfig, reproduce_command
from steering.eval.task_source import UNSEEN_DIR, available_tasks, load_eval_task
from steering.tasks.datasets import task_names
from steering.wire.protocol import Demonstration

# Set aside for issue 22's rounds 2, 4, 5 and 6, (unseen_5) after round 7, (unseen_6) in round 8, (unseen_7) in 9,
# (unseen_8) in 10, (unseen_9) in 11, (unseen_10 and unseen_11) in 12, (unseen_12) in 13, (unseen_13) in 14,
# (unseen_14) in 15, (unseen_15) in 16, (unseen_16) in 17, (unseen_17) in 18.
UNSEEN_NAMES = ("unseen", *(f"unseen_{n}" for n in range(2, 18)))
UNSEEN_SETS = tuple(UNSEEN_DIR.parent / name for name in UNSEEN_NAMES)


def test_the_unseen_tasks_are_not_packaged_tasks_nor_in_two_sets() -> None:
    sets = [set(available_tasks(folder)) for folder in UNSEEN_SETS]
    assert [len(s) for s in sets] == [6, 4, 4, 5, 5, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4]
    assert not set().union(*sets) & set(task_names())
    assert sum(len(s) for s in sets) == len(set().union(*sets))  # no task in two sets
    assert available_tasks(None) == task_names()


@pytest.mark.parametrize(
    ("folder", "name"), [(folder, name) for folder in UNSEEN_SETS for name in available_tasks(folder)]
)
def test_each_unseen_task_has_unique_inputs_and_room_for_the_default_split(folder: Path, name: str) -> None:
    items = load_eval_task(name, folder)
    assert len(items) >= 60  # 40 demonstrations + 20 test items
    assert len({d.input for d in items}) == len(items)


def test_a_folder_of_jsonl_files_is_read(tmp_path: Path) -> None:
    rows = [{"input": "a", "output": "b"}, {"input": "c", "output": "d"}]
    (tmp_path / "mine.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "notes.txt").write_text("not a task")
    assert available_tasks(tmp_path) == ["mine"]
    assert load_eval_task("mine", tmp_path) == [
        Demonstration(input="a", output="b"),
        Demonstration(input="c", output="d"),
    ]
    with pytest.raises(KeyError):
        load_eval_task("antonyms", tmp_path)
    with pytest.raises(ValueError):
        available_tasks(tmp_path / "missing")


def test_the_reproduce_command_names_the_folder() -> None:
    command = reproduce_command(EvalConfig(tasks=["element_name"], tasks_dir=str(UNSEEN_DIR)))
    assert f"--tasks-dir {UNSEEN_DIR}" in command
    assert "--tasks-dir" not in reproduce_command(EvalConfig())


def test_cli_eval_runs_every_task_of_a_folder(tmp_path: Path) -> None:
    folder = tmp_path / "tasks"
    folder.mkdir()
    pairs = [(w, w.upper()) for w in ("cat", "dog", "sun", "tree", "book", "lamp", "rain", "fish", "road", "milk")]
    (folder / "shout.jsonl").write_text("\n".join(json.dumps({"input": i, "output": o}) for i, o in pairs) + "\n")
    args = ["eval", "--model", "tiny:llama", "--tasks-dir", str(folder), "--methods", "task_vector"]
    args += ["--demos", "6", "--test", "3", "--k-shot", "2", "--max-new-tokens", "3", "--multiples", "1"]
    args += ["--option", "task_vector.num_prompts=4", "--out", str(tmp_path / "out"), "--no-progress"]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert list(data["tasks"]) == ["shout"]
    shout = data["tasks"]["shout"]
    assert shout["answers"] == [i.upper() for i in shout["inputs"]] and len(shout["inputs"]) == 3
    assert f"--tasks-dir {folder}" in data["meta"]["command"]
    refused = CliRunner().invoke(app, [*args[:5], "--tasks", "antonyms", "--out", str(tmp_path / "x"), "--no-progress"])
    assert refused.exit_code == 2 and "unknown task" in refused.output


def test_cli_eval_with_no_method_scores_the_prompting_baselines(tmp_path: Path) -> None:
    args = ["eval", "--model", "tiny:llama", "--tasks-dir", str(UNSEEN_DIR), "--tasks", "element_name"]
    args += ["--methods", "none", "--demos", "6", "--test", "3", "--k-shot", "2", "--max-new-tokens", "3"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path), "--no-progress"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "results.json").read_text())
    conditions = data["tasks"]["element_name"]["conditions"]
    assert set(conditions) == {"zero_shot", "few_shot"} and data["tasks"]["element_name"]["methods"] == {}
    assert (tmp_path / "per_task.png").is_file() and not (tmp_path / "sweep.png").exists()
    assert "--methods none" in data["meta"]["command"]
