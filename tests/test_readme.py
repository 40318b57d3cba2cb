"""What the README tells a newcomer to type works in a fresh checkout: the files its commands read exist, and
it says where `make serve` put the `steer` command."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app.settings import Settings
from steering.tasks.datasets import read_demonstrations
from steering.tasks.verdict import MIN_HELD_OUT
from steering.vectors.export import GGUF_METHODS
from steering.vectors.modes import GGUF_EXPORTABLE_MODES
from steering.wire.method_names import METHOD_NAMES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest itself depends on tomli before 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
EXAMPLE_DEMOS = ROOT / "examples" / "antonyms.txt"


def code_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```[a-z]*\n(.*?)^```", markdown, flags=re.MULTILINE | re.DOTALL)


def section(markdown: str, heading: str) -> str:
    """The text under a `## heading` up to the next heading of the same or a higher level."""
    match = re.search(rf"^(#+) {re.escape(heading)}\n(.*?)(?=^#{{1,2}} )", markdown, flags=re.MULTILINE | re.DOTALL)
    assert match, f"no section {heading!r} in the README"
    return match.group(2)


def test_the_example_demonstrations_parse_with_the_cli_reader() -> None:
    """`steer tasks register` reads files with `read_demonstrations`; the example holds enough to hold some out."""
    demos = read_demonstrations(EXAMPLE_DEMOS)
    assert len(demos) >= MIN_HELD_OUT
    assert all(d.input and d.output and "->" not in d.output for d in demos)


def test_every_file_the_readme_commands_read_exists() -> None:
    code = "\n".join(code_blocks(README.read_text()))
    demo_files = re.findall(r"steer tasks register (\S+)", code) + re.findall(r"\.register\(\s*\"([^\"]+)\"", code)
    assert demo_files, "the README registers no task from a file"
    for name in demo_files:
        path = ROOT / name
        assert path.is_file(), f"the README's commands read {name}, which the repository does not ship"
        assert read_demonstrations(path)
    for module in re.findall(r"python -m (scripts\.\w+)", code):
        assert importlib.util.find_spec(module) is not None, f"the README runs {module}, which does not exist"


def test_every_local_link_in_the_readme_exists() -> None:
    for target in re.findall(r"\]\(((?!https?:|#)[^)#]+)", README.read_text()):
        assert (ROOT / target).exists(), f"the README links to {target}, which does not exist"


def test_the_readme_says_where_the_steer_command_is() -> None:
    """`make serve` installs into the Makefile's venv; the Quick start names the command there and how to activate."""
    venv = re.search(r"^VENV \?= (\S+)$", (ROOT / "Makefile").read_text(), flags=re.MULTILINE)
    assert venv
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "steer" in scripts
    quick_start = section(README.read_text(), "Quick start")
    assert f"{venv.group(1)}/bin/steer" in quick_start
    assert f". {venv.group(1)}/bin/activate" in "\n".join(code_blocks(quick_start))


def test_the_readme_says_which_vectors_export_to_gguf() -> None:
    """The README's GGUF paragraph names exactly what `steering.vectors.export` exports, and the methods it refuses."""
    paragraph = re.search(r"^\*\*GGUF export\.\*\*(.*?)\n\n", README.read_text(), flags=re.MULTILINE | re.DOTALL)
    assert paragraph, "the README has no GGUF export paragraph"
    text = " ".join(paragraph.group(1).split())
    for exportable in (*GGUF_EXPORTABLE_MODES, *GGUF_METHODS):
        assert f"`{exportable}`" in text
    refused = [m for m in METHOD_NAMES if m != "auto" and m not in GGUF_METHODS]
    assert refused and all(f"`{m}`" in text for m in refused) and "safetensors only" in text


def test_the_quick_start_says_how_to_change_the_port_and_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its `make serve` lines set STEER_PORT and STEER_HOST, which the settings read and the Makefile passes on."""
    quick_start = "\n".join(code_blocks(section(README.read_text(), "Quick start")))
    assignments = [
        re.findall(r"\b(STEER_\w+)=(\S+)", line.split("#")[0])
        for line in quick_start.splitlines()
        if re.search(r"\bmake serve\b", line)
    ]
    assert {"STEER_PORT", "STEER_HOST"} <= {name for line in assignments for name, _ in line}
    for line in filter(None, assignments):
        for name, value in line:
            monkeypatch.setenv(name, value)
        settings = Settings(_env_file=None)
        for name, value in line:
            if name == "STEER_PORT":
                assert settings.port == int(value)
            if name == "STEER_HOST":
                assert settings.host == value
        for name, _ in line:
            monkeypatch.delenv(name)
    if shutil.which("make"):
        serve = subprocess.run(["make", "-n", "serve"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        assert "-m app" in serve and "STEER_PORT" not in serve and "STEER_HOST" not in serve
