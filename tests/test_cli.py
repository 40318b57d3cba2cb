"""`steer` against a real server: through typer's CliRunner, and once as a real subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from steering.cli import (
    EXIT_AUTH,
    EXIT_ERROR,
    EXIT_NOT_FOUND,
    EXIT_NOT_READY,
    EXIT_USAGE,
    answer_end_text,
    app,
    layer_ranges,
    parse_task,
    task_table,
    tasks_table,
)
from steering.client import Client
from steering.wire.protocol import SteeringEntry, TaskInfo
from tests.conftest import ServerProcess, start_server

DEMOS_TEXT = "hot -> cold\nbig -> small\nfast -> slow\nup -> down\nday -> night\nin -> out\n"
SLOW = ["-o", "steps=5000", "-o", "eval_every=1000", "-o", "patience=1000"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("cli-server")
    proc = start_server({"STEER_MODEL": "tiny:llama", "STEER_DATA_DIR": str(folder / "data")}, folder / "server.log")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def demos_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli-demos") / "antonyms.txt"
    path.write_text(DEMOS_TEXT)
    return path


@pytest.fixture
def steer(server: ServerProcess):
    runner = CliRunner()

    def invoke(*args: str, env: dict[str, str] | None = None, input: str | None = None):
        full_env = {"STEER_URL": server.url, "STEER_API_KEY": "", **(env or {})}
        return runner.invoke(app, list(args), env=full_env, input=input, catch_exceptions=False)

    return invoke


@pytest.fixture(scope="module")
def task_id(server: ServerProcess, demos_file: Path) -> str:
    result = CliRunner().invoke(
        app,
        ["--json", "tasks", "register", str(demos_file), "--method", "task_vector", "--name", "antonyms"],
        env={"STEER_URL": server.url, "STEER_API_KEY": ""},
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["status"] == "ready"
    return info["id"]


def test_register_human_and_json(steer, demos_file: Path, task_id: str) -> None:
    human = steer("tasks", "register", str(demos_file), "-m", "task_vector", "--name", "antonyms")
    assert human.exit_code == 0, human.output
    assert task_id in human.stdout and "ready" in human.stdout and "antonyms" in human.stdout
    assert "verdict" in human.stdout and "scores" in human.stdout and "answers end" in human.stdout
    as_json = steer("tasks", "register", str(demos_file), "-m", "task_vector", "--json")
    assert json.loads(as_json.stdout)["id"] == task_id


def test_register_from_stdin(steer, task_id: str) -> None:
    result = steer("--json", "tasks", "register", "-", "--method", "task_vector", input=DEMOS_TEXT)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["id"] == task_id


def test_register_on_the_chat_template(steer, task_id: str) -> None:
    """`--chat` computes the vector on the model's chat template: another task, whose queries are chat turns."""
    from steering.model.loading import load_model
    from steering.tasks.templates import chat_template

    result = steer("--json", "tasks", "register", "-", "--method", "task_vector", "--chat", input=DEMOS_TEXT)
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["id"] != task_id and info["status"] == "ready"
    assert info["template"]["query"] == chat_template(load_model("tiny:llama").tokenizer).query


def test_register_no_wait_and_options(steer, demos_file: Path) -> None:
    result = steer("--json", "tasks", "register", str(demos_file), "-m", "soft_injection", *SLOW, "--no-wait")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    try:
        assert info["status"] in ("pending", "running")
        assert info["options"]["steps"] == 5000 and info["method"] == "soft_injection"
        not_ready = steer("generate", "--task", info["id"], "--input", "hot")
        assert not_ready.exit_code == EXIT_NOT_READY
        assert "error" in not_ready.stderr
        timed_out = steer("tasks", "register", str(demos_file), "-m", "soft_injection", *SLOW, "--timeout", "0.3")
        assert timed_out.exit_code == EXIT_NOT_READY
    finally:
        assert steer("tasks", "delete", info["id"]).exit_code == 0


def test_list_show_delete(steer, demos_file: Path, task_id: str) -> None:
    listed = steer("tasks", "list", "--json")
    assert task_id in [t["id"] for t in json.loads(listed.stdout)["tasks"]]
    table = steer("tasks", "list")
    assert table.exit_code == 0 and task_id in table.stdout and "antonyms" in table.stdout
    shown = steer("tasks", "show", task_id)
    assert shown.exit_code == 0 and "task_vector" in shown.stdout and "default strength" in shown.stdout
    other = steer("--json", "tasks", "register", "-", "-m", "task_vector", input="a -> b\nc -> d\ne -> f\n")
    other_id = json.loads(other.stdout)["id"]
    deleted = steer("tasks", "delete", other_id, "--json")
    assert deleted.exit_code == 0 and json.loads(deleted.stdout) == {"id": other_id, "deleted": True}
    missing = steer("tasks", "show", other_id)
    assert missing.exit_code == EXIT_NOT_FOUND and "not found" in missing.stderr
    missing_json = steer("--json", "tasks", "delete", other_id)
    assert missing_json.exit_code == EXIT_NOT_FOUND
    assert json.loads(missing_json.stderr)["error"]["type"] == "not_found"


def words(text: str) -> str:
    """Text with its whitespace (and a table's line wrapping) collapsed."""
    return " ".join(text.split())


def test_show_and_list_give_the_verdict(steer, task_id: str) -> None:
    """The server's verdict: its summary, steered / k-shot / zero-shot in %, the answer-end rule; JSON carries both."""
    info = json.loads(steer("--json", "tasks", "show", task_id).stdout)
    verdict = info["verdict"]
    assert verdict["rating"] in ("better_than_few_shot", "as_good_as_few_shot", "below_few_shot", "no_effect")
    assert verdict["metric"] in ("exact", "first_token") and isinstance(verdict["few_shot_k"], int)
    assert info["answer_end"]["stop"] == ["\n"] and info["answer_end"]["max_words"] == 1  # one-word answers
    shown = steer("tasks", "show", task_id)
    assert shown.exit_code == 0, shown.output
    text = words(shown.stdout)
    assert "verdict " + words(verdict["summary"]) in text
    pct = lambda x: f"{100 * x:.0f} %"  # noqa: E731
    scores = (
        f"scores steered {pct(verdict['steered'])} · {verdict['few_shot_k']}-shot {pct(verdict['few_shot'])} · "
        f"zero-shot {pct(verdict['zero_shot'])}"
    )
    assert scores in text
    assert ("advice" in text) == (verdict["advice"] is not None)
    assert 'answers end stop "\\n" · at , ;' in text and "max 1 word" in text
    assert "layers " + layer_ranges(info["layers"]) in text
    listed = json.loads(steer("--json", "tasks", "list").stdout)["tasks"]
    assert next(t for t in listed if t["id"] == task_id)["verdict"] == verdict
    table = steer("tasks", "list")
    assert table.exit_code == 0 and "verdict" in table.stdout
    assert f"vs {verdict['few_shot_k']}-shot {pct(verdict['few_shot'])}" in words(table.stdout)


def render(table) -> str:
    console = Console(width=120, record=True, color_system=None)
    console.print(table)
    return words(console.export_text())


WEAK_VERDICT = {  # a weak vector's verdict as the server words it (also drawn by tests/test_playground.py)
    "rating": "below_few_shot",
    "summary": "icv answers 20 % of 10 held-out demonstrations exactly; 10-shot prompting 60 %, zero-shot 0 %: "
    "below 10-shot prompting.",
    "advice": "icv did not change answers on this mapping task; soft_injection reached 80 % [try it].",
    "metric": "exact",
    "steered": 0.2,
    "zero_shot": 0.0,
    "few_shot": 0.6,
    "few_shot_k": 10,
    "held_out": 10,
    "margin": 0.37,
}
WEAK = TaskInfo.model_validate(
    {
        "id": "task-weak",
        "status": "ready",
        "method": "icv",
        "name": "lookup [v2]",
        "layers": list(range(30)),
        "verdict": WEAK_VERDICT,
        "answer_end": {"stop": ["\n"], "delimiters": [",", "[", " -"], "max_words": 2, "max_chars": 1, "max_tokens": 7},
    }
)


def test_a_weak_verdict_is_shown_with_its_advice() -> None:
    shown = render(task_table(WEAK))
    assert "layers 0-29 " in shown and "0,1" not in shown
    assert "verdict " + words(WEAK.verdict.summary) in shown
    assert (
        "scores steered 20 % · 10-shot 60 % · zero-shot 0 % "
        "(exact match, 10 held out, gaps under 37 points may be chance)" in shown
    )
    assert "advice " + WEAK.verdict.advice in shown  # markup in text is printed as written
    assert 'answers end stop "\\n" · at , [ " -" · max 2 words · max 1 char · max 7 tokens' in shown
    listed = render(tasks_table([WEAK]))
    assert "below: 20 % vs 10-shot 60 %" in listed and "0-29" in listed and "lookup [v2]" in listed
    no_verdict = render(task_table(WEAK.model_copy(update={"verdict": None, "answer_end": None})))
    assert "verdict" not in no_verdict and "answers end" not in no_verdict


def test_layer_ranges_and_answer_end_text() -> None:
    assert layer_ranges([0, 1, 2, 3, 7, 9, 10, 11]) == "0-3, 7, 9-11"
    assert layer_ranges(list(range(30))) == "0-29"
    assert layer_ranges([11, 3, 10, 2, 3]) == "2-3, 10-11"
    assert layer_ranges([5]) == "5" and layer_ranges([]) == "-" and layer_ranges(None) == "-"
    assert answer_end_text({"stop": ["\n\n"], "delimiters": [], "max_words": 1}) == 'stop "\\n\\n" · max 1 word'
    assert answer_end_text(None) == "-"


def test_generate(steer, server: ServerProcess, task_id: str) -> None:
    with Client(server.url, api_key="") as client:
        plain = client.generate(input="tall", max_new_tokens=6).text
        steered = client.generate(input="tall", steering=[(task_id, 0.75)], max_new_tokens=6).text
    zero = steer("generate", "--task", f"{task_id}:0", "--input", "tall", "--max-new-tokens", "6", "--json")
    assert zero.exit_code == 0, zero.output
    body = json.loads(zero.stdout)
    assert body["text"] == plain and body["steering"][0]["strength"] == 0.0
    human = steer("generate", "-t", f"{task_id}:0.75", "-i", "tall", "--max-new-tokens", "6")
    assert human.exit_code == 0 and human.stdout == steered + "\n"
    assert "tokens" in human.stderr
    streamed = steer("generate", "-t", f"{task_id}:0.75", "-i", "tall", "--max-new-tokens", "6", "--stream")
    assert streamed.exit_code == 0 and streamed.stdout == steered + "\n"
    events = steer("--json", "generate", "-t", f"{task_id}:0.75", "-i", "tall", "--max-new-tokens", "6", "--stream")
    lines = [json.loads(line) for line in events.stdout.splitlines()]
    assert "".join(e["text"] for e in lines if e["event"] == "token") == steered
    assert lines[-1]["event"] == "done" and lines[-1]["text"] == steered
    prompt = steer("generate", "Q: tall\nA:", "-t", task_id, "--max-new-tokens", "3", "--stop", "\n")
    assert prompt.exit_code == 0


def test_tasks_by_name(steer, task_id: str) -> None:
    by_id = steer("--json", "generate", "--task", f"{task_id}:0.75", "-i", "tall", "--max-new-tokens", "6")
    by_name = steer("--json", "generate", "--task", "antonyms:0.75", "-i", "tall", "--max-new-tokens", "6")
    assert by_name.exit_code == 0, by_name.output
    assert json.loads(by_name.stdout)["text"] == json.loads(by_id.stdout)["text"]
    shown = steer("--json", "tasks", "show", "antonyms")
    assert shown.exit_code == 0 and json.loads(shown.stdout)["id"] == task_id
    assert steer("generate", "-t", "nobody:1", "-i", "x").exit_code == EXIT_NOT_FOUND


def test_usage_errors(steer, demos_file: Path, task_id: str, tmp_path: Path) -> None:
    assert steer("generate", "-t", task_id).exit_code == EXIT_USAGE  # neither --input nor TEXT
    assert steer("generate", "text", "--input", "x").exit_code == EXIT_USAGE  # both
    assert steer("tasks", "register", str(demos_file), "-o", "novalue").exit_code == EXIT_USAGE
    assert steer("tasks", "register", str(demos_file), "-m", "magic").exit_code == EXIT_USAGE
    refused = steer("tasks", "register", str(demos_file), "-m", "task_vector", "-o", "bogus=1")
    assert refused.exit_code == EXIT_USAGE and "bogus" in refused.stderr  # the server's 422
    assert steer("tasks", "register", str(tmp_path / "missing.txt")).exit_code == EXIT_USAGE
    bad = tmp_path / "bad.txt"
    bad.write_text("no arrow here\n")
    assert steer("tasks", "register", str(bad)).exit_code == EXIT_USAGE
    assert steer("export", task_id, "-f", "xml").exit_code == EXIT_USAGE
    assert steer("generate", "-t", "task-nope", "-i", "x").exit_code == EXIT_NOT_FOUND
    assert steer("tasks", "list", env={"STEER_URL": "http://127.0.0.1:9"}).exit_code == EXIT_ERROR


def test_export_import(steer, task_id: str, tmp_path: Path) -> None:
    out = tmp_path / "antonyms.safetensors"
    exported = steer("export", task_id, "-o", str(out))
    assert exported.exit_code == 0, exported.output
    assert out.stat().st_size > 0 and "safetensors" in exported.stderr
    gguf = steer("export", task_id, "--format", "gguf", "-o", str(tmp_path / "x.gguf"))
    assert gguf.exit_code == EXIT_USAGE and "safetensors only" in gguf.stderr
    assert "no additive form" in words(gguf.stderr) and "function_vector, icv and contrastive" in words(gguf.stderr)
    imported = steer("--json", "import", str(out), "--name", "copy")
    assert imported.exit_code == 0, imported.output
    info = json.loads(imported.stdout)
    assert info["status"] == "ready" and info["name"] == "copy" and info["id"] != task_id
    human = steer("import", str(out))
    assert human.exit_code == 0 and info["id"] in human.stdout
    assert steer("export", "task-nope", "-o", str(tmp_path / "n.safetensors")).exit_code == EXIT_NOT_FOUND


def test_auth(server_factory) -> None:
    keyed = server_factory(STEER_API_KEYS="sesame")
    runner = CliRunner()
    env = {"STEER_URL": keyed.url, "STEER_API_KEY": ""}
    denied = runner.invoke(app, ["tasks", "list"], env=env)
    assert denied.exit_code == EXIT_AUTH and "API key" in denied.stderr
    assert runner.invoke(app, ["--api-key", "wrong", "tasks", "list"], env=env).exit_code == EXIT_AUTH
    allowed = runner.invoke(app, ["--api-key", "sesame", "--json", "tasks", "list"], env=env)
    assert allowed.exit_code == 0 and json.loads(allowed.stdout) == {"tasks": [], "total": 0, "next_offset": None}
    from_env = runner.invoke(app, ["tasks", "list"], env={**env, "STEER_API_KEY": "sesame"})
    assert from_env.exit_code == 0


def test_help_documents_exit_codes() -> None:
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "Exit codes" in result.stdout and "5 API key" in result.stdout
    for command in ("serve", "generate", "export", "import", "tasks"):
        assert command in result.stdout


def test_serve_execs_the_app(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, list[str], dict[str, str]]] = []
    monkeypatch.setattr("steering.cli.serve.os.execvpe", lambda file, args, env: calls.append((file, args, env)))
    result = CliRunner().invoke(app, ["serve", "--port", "8123", "--model", "tiny:llama"])
    assert result.exit_code == 0, result.output
    [(file, args, env)] = calls
    assert file == sys.executable and args == [sys.executable, "-m", "app"]
    assert env["STEER_PORT"] == "8123" and env["STEER_MODEL"] == "tiny:llama"
    assert "STEER_PORT" not in os.environ or os.environ["STEER_PORT"] != "8123"  # the CLI's own env is untouched


def test_parse_task() -> None:
    assert parse_task("task-abc") == SteeringEntry(task="task-abc")
    assert parse_task("task-abc:1.5") == SteeringEntry(task="task-abc", strength=1.5)
    assert parse_task("task-abc:-2") == SteeringEntry(task="task-abc", strength=-2.0)
    assert parse_task("odd:name") == SteeringEntry(task="odd:name")


def steer_executable() -> str:
    found = Path(sys.executable).parent / "steer"
    return str(found) if found.exists() else shutil.which("steer") or "steer"


def test_real_subprocess(server: ServerProcess, task_id: str, tmp_path: Path) -> None:
    env = {**os.environ, "STEER_URL": server.url, "STEER_API_KEY": ""}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([steer_executable(), *args], env=env, capture_output=True, text=True, timeout=120)

    listed = run("--json", "tasks", "list")
    assert listed.returncode == 0, listed.stderr
    assert task_id in [t["id"] for t in json.loads(listed.stdout)["tasks"]]
    generated = run("generate", "--task", f"{task_id}:1", "--input", "tall", "--max-new-tokens", "4")
    assert generated.returncode == 0, generated.stderr
    assert run("tasks", "show", "task-nope").returncode == EXIT_NOT_FOUND
    assert run("generate").returncode == EXIT_USAGE
