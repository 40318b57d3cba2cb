"""Write docs/COMPATIBILITY.md: every supported model type, where it is steered, and which tests hold it.

    python -m scripts.compat_table           # rewrite the file
    python -m scripts.compat_table --check   # exit 1 when the file is out of date

Rows come from the architecture table (`steering.model.arch.FAMILIES`) and the tiny models
(`steering.model.tiny.TINY_SPECS`);
the "held by" columns come from the test ids pytest collects, so a row claims only what a collected test runs.
tests/test_compatibility.py fails when the checked-in file differs from what this writes.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from steering.model.arch import FAMILIES, supported_model_types
from steering.model.tiny import TINY_MODELS, TINY_SPECS, tiny_model_type

ROOT = Path(__file__).resolve().parent.parent
DOC_PATH = ROOT / "docs" / "COMPATIBILITY.md"
TEST_FILES = ("tests/test_steering_core.py", "tests/test_compatibility.py")
SUITE_FILE = "tests/test_steering_core.py"
METHOD_COLUMNS = ("task_vector", "function_vector", "soft_injection", "icv", "contrastive")
FOLDER_TEST = "test_a_saved_folder_loads_to_the_same_model"
HTTP_TEST = "test_served_from_a_local_folder"
PARAM_WORDS = {"fv_attribution": "function vectors with attribution head selection too"}
_TEST_ID = re.compile(r"^(?P<file>[^:]+)::(?P<name>\w+)(?:\[(?P<params>[^\]]*)\])?$")


@dataclass
class Coverage:
    """What the collected tests run for one model type."""

    suite_tests: int = 0
    tiny_models: set[str] = field(default_factory=set)
    methods: set[str] = field(default_factory=set)
    folder: bool = False
    http: bool = False


def collect_test_ids() -> list[str]:
    """Test ids as pytest collects them (no test runs), parametrisation included."""
    command = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *TEST_FILES]
    # PYTEST_ADDOPTS (a -k or -m of the calling run) must not deselect rows.
    env = {key: value for key, value in os.environ.items() if key != "PYTEST_ADDOPTS"} | {"OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"pytest could not collect {TEST_FILES}:\n{done.stdout}\n{done.stderr}")
    return [line.strip() for line in done.stdout.splitlines() if "::" in line]


def coverage(test_ids: list[str]) -> tuple[dict[str, Coverage], dict[str, set[str]]]:
    """Per model type, what its collected tests cover; and the suite's tests (in collection order), each with
    the parameters it runs under besides the model type."""
    names = set(TINY_MODELS)
    rows: dict[str, Coverage] = defaultdict(Coverage)
    suite: dict[str, set[str]] = {}
    for test_id in test_ids:
        match = _TEST_ID.match(test_id)
        if match is None or not match["params"]:
            continue
        params = set(match["params"].split("-"))
        for name in params & names:
            row = rows[tiny_model_type(name)]
            if match["file"] == SUITE_FILE:
                row.suite_tests += 1
                row.tiny_models.add(name)
                row.methods |= params & set(METHOD_COLUMNS)
                suite.setdefault(match["name"], set()).update(params - names)
            row.folder |= match["name"] == FOLDER_TEST
            row.http |= match["name"] == HTTP_TEST
    return rows, suite


def _suite_line(test_name: str, params: set[str]) -> str:
    words = test_name.removeprefix("test_").replace("_", " ")
    line = f"- {words[0].upper()}{words[1:]} (`{test_name}`)"
    if params & set(METHOD_COLUMNS):
        line += ", for every method's vector"
        params = params - set(METHOD_COLUMNS)
    if params:
        line += ", " + ", ".join(PARAM_WORDS.get(p, f"`{p}`") for p in sorted(params))
    return line + "."


def _exercises(model_type: str, tiny_models: set[str]) -> str:
    """What the type's own tiny model exercises, then each variant suite-tested beside it."""
    if model_type not in tiny_models:
        return "no tiny model runs the suite"
    variants = [name for name in TINY_MODELS if name in tiny_models and name != model_type]
    return "; ".join([TINY_SPECS[model_type].exercises, *(f"`{n}`: {TINY_SPECS[n].exercises}" for n in variants)])


def _mark(flag: bool) -> str:
    return "✓" if flag else "–"


def render(test_ids: list[str] | None = None) -> str:
    rows, suite = coverage(collect_test_ids() if test_ids is None else test_ids)
    family_of = {model_type: family for family in FAMILIES for model_type in family.model_types}
    header = [
        "model type",
        "family",
        "decoder layers",
        "heads read at (input of)",
        *METHOD_COLUMNS,
        "suite tests",
        "from a folder",
        "over HTTP",
        "the tiny model exercises",
    ]
    lines = [
        "# Compatibility",
        "",
        "<!-- Generated by `python -m scripts.compat_table`; do not edit by hand. "
        "tests/test_compatibility.py fails when this file is out of date. -->",
        "",
        "A checkpoint is supported when its `config.model_type` is a row below: every method computes on it (`auto`",
        "picks among them), and requests steer its residual stream and its attention heads (mixtures of experts",
        "included: the router sees the steered residual). Each row is held by tests that run",
        "in `make test` on a tiny random model of that type, built in code (`steering/model/tiny.py`: 2 layers, hidden",
        "64, 4 heads, 2 key-value heads where the type has them, plus what the last column names; variants of a",
        "type, `tiny:<type>_<variant>`, run the suite too). The columns",
        "after the paths are read from the test ids pytest collects:",
        "",
        f"- a method is ticked when invariant tests of `{SUITE_FILE}` run with a vector of that method on the type;",
        "  `suite tests` counts that file's tests for the type;",
        f"- `from a folder`: `{FOLDER_TEST}` saves the model and loads it back through `load_model`;",
        f"- `over HTTP`: `{HTTP_TEST}` starts the app with `STEER_MODEL=<folder>`, computes",
        "  function-vector and soft-injection tasks and steers generations.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for model_type in supported_model_types():
        family = family_of[model_type]
        row = rows.get(model_type, Coverage())
        cells = [
            f"`{model_type}`",
            family.name,
            f"`{family.layers_path}`",
            f"`{family.attn_out_path}`",
            *(_mark(method in row.methods) for method in METHOD_COLUMNS),
            str(row.suite_tests),
            _mark(row.folder),
            _mark(row.http),
            _exercises(model_type, row.tiny_models),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"## The invariant suite (`{SUITE_FILE}`), run for every row",
        "",
        *(_suite_line(name, params) for name, params in suite.items()),
        "",
        "## Other model types",
        "",
        "Loading any other type fails at once with `UnsupportedArchitecture`, whose message lists the types above.",
        "Adding a type takes one entry in `steering/model/arch.py` (where its decoder layers and attention output",
        "projection are) and one in `steering/model/tiny.py` (its tiny model); the suite then runs on it, and this "
        "file",
        "is regenerated with `python -m scripts.compat_table`.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/COMPATIBILITY.md is out of date")
    args = parser.parse_args()
    text = render()
    if args.check:
        current = DOC_PATH.read_text() if DOC_PATH.exists() else ""
        if current != text:
            sys.exit(f"{DOC_PATH.relative_to(ROOT)} is out of date: run python -m scripts.compat_table")
        return
    DOC_PATH.write_text(text)
    print(f"wrote {DOC_PATH.relative_to(ROOT)} ({len(supported_model_types())} model types)")


if __name__ == "__main__":
    main()
