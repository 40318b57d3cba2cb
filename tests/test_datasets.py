from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest

from steering.tasks.datasets import TASKS_DIR, load_task, read_demonstrations, split_task, task_names
from steering.wire.protocol import Demonstration

# Domains that cannot reach 100 items, and the hand-written checks on kinds outside the development suite,
# which need at least the evaluation's 40 demonstrations and 20 test items.
SMALL_TASKS = {"next_letter": 25, "category": 60, "product_company": 60, "sentiment": 60}
MIN_ITEMS = 100


def test_at_least_16_tasks() -> None:
    names = task_names()
    assert len(names) >= 16
    assert names == sorted(names)
    assert {"antonyms", "country_capital", "uppercase", "next_letter"} <= set(names)


@pytest.mark.parametrize("name", task_names())
def test_packaged_task_is_well_formed(name: str) -> None:
    items = load_task(name)
    assert all(isinstance(d, Demonstration) for d in items)
    assert len(items) >= SMALL_TASKS.get(name, MIN_ITEMS)
    inputs = [d.input for d in items]
    assert len(set(inputs)) == len(inputs), "duplicate inputs"
    for d in items:
        assert d.input.strip() and d.output.strip()
        assert d.input == d.input.strip() and d.output == d.output.strip()
        assert "\n" not in d.input and "\n" not in d.output


def test_packaged_files_are_strict_jsonl() -> None:
    for path in TASKS_DIR.glob("*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            assert set(json.loads(line)) == {"input", "output"}, path.name


def test_readme_lists_every_task_with_its_count() -> None:
    readme = (TASKS_DIR / "README.md").read_text(encoding="utf-8")
    for name in task_names():
        row = re.search(rf"^\|\s*`?{name}`?\s*\|\s*(\d+)\s*\|", readme, flags=re.MULTILINE)
        assert row, f"{name} missing from README table"
        assert int(row.group(1)) == len(load_task(name)), name


def test_spot_check_rule_tasks() -> None:
    assert Demonstration(input="42", output="forty-two") in load_task("number_to_word")
    assert Demonstration(input="115", output="one hundred fifteen") in load_task("number_to_word")
    for d in load_task("uppercase"):
        assert d.output == d.input.upper()
    for d in load_task("reverse_list"):
        assert d.output.split(", ") == d.input.split(", ")[::-1]
    for d in load_task("word_length"):
        assert int(d.output) == len(d.input)
    for d in load_task("next_number"):
        numbers = [int(n) for n in d.input.split(", ")] + [int(d.output)]
        assert len({b - a for a, b in itertools.pairwise(numbers)}) == 1


def test_unknown_task_lists_known_names() -> None:
    with pytest.raises(KeyError, match="antonyms"):
        load_task("no_such_task")


def test_split_task_is_disjoint_and_deterministic() -> None:
    items = load_task("antonyms")
    demos, test = split_task(items, 10, 50, seed=3)
    assert (len(demos), len(test)) == (10, 50)
    assert not {d.input for d in demos} & {d.input for d in test}
    assert (demos, test) == split_task(items, 10, 50, seed=3)
    assert split_task(items, 10, 50, seed=4) != (demos, test)
    assert items == load_task("antonyms"), "split_task must not reorder its argument"


def test_split_task_rejects_too_many() -> None:
    items = load_task("next_letter")
    with pytest.raises(ValueError):
        split_task(items, 20, 6)
    demos, test = split_task(items, 20, 5)
    assert len({d.input for d in demos + test}) == 25


def test_read_demonstrations_arrow_text() -> None:
    text = "# a comment\n\nhot -> cold\n  big->small  \nx -> a -> b\n"
    assert read_demonstrations(text) == [
        Demonstration(input="hot", output="cold"),
        Demonstration(input="big", output="small"),
        Demonstration(input="x", output="a -> b"),
    ]


def test_read_demonstrations_jsonl_file(tmp_path: Path) -> None:
    path = tmp_path / "demos.jsonl"
    path.write_text(
        '{"input": "France", "output": "Paris"}\n\n# note\n{"input": "Japan", "output": "Tokyo", "id": 2}\n',
        encoding="utf-8",
    )
    expected = [Demonstration(input="France", output="Paris"), Demonstration(input="Japan", output="Tokyo")]
    assert read_demonstrations(path) == expected
    assert read_demonstrations(str(path)) == expected


def test_read_demonstrations_mixed_formats() -> None:
    text = '{"input": "a", "output": "b"}\nc -> d\n'
    assert [d.output for d in read_demonstrations(text)] == ["b", "d"]


@pytest.mark.parametrize(
    "bad",
    [
        "no arrow here",
        "-> missing input",
        "missing output ->",
        '{"input": "a"}',
        '{"input": "a", "output": 3}',
        '{"input": "a", "output": ',
        '["a", "b"]',
    ],
)
def test_read_demonstrations_reports_line_number(bad: str) -> None:
    text = f"# header\nhot -> cold\n\n{bad}\nbig -> small\n"
    with pytest.raises(ValueError, match=r"^line 4: "):
        read_demonstrations(text)


def test_read_demonstrations_missing_file() -> None:
    with pytest.raises(FileNotFoundError):
        read_demonstrations("does/not/exist.jsonl")
    with pytest.raises(FileNotFoundError):
        read_demonstrations(Path("does/not/exist.jsonl"))
