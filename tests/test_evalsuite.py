"""`steer eval` on the tiny model: the outputs' structure, and the HTTP backend matching the in-process one."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from steering.cli import app
from steering.eval import (
    EvalConfig,
    LocalBackend,
    RemoteBackend,
    first_token_right,
    parse_method_options,
    run_suite,
    write_outputs,
)
from steering.model.loading import LoadedModel
from tests.conftest import ServerProcess

TASKS = ["antonyms", "uppercase"]
SMALL = {"n_demos": 16, "n_test": 6, "k_shot": 4, "max_new_tokens": 6}


def small_config(methods: list[str], **overrides: Any) -> EvalConfig:
    return EvalConfig(model="tiny:llama", methods=methods, **{"tasks": TASKS, **SMALL, **overrides})


def untimed(metrics: dict[str, Any]) -> dict[str, Any]:
    """A method's held-out metrics without its training times."""
    return {k: v for k, v in metrics.items() if not k.endswith("_seconds")}


def numbers(result: dict[str, Any]) -> dict[str, Any]:
    """Everything that must not depend on the backend: scores, generations, chosen settings (not timings)."""
    out = {}
    for name, task in result["tasks"].items():
        methods = {
            method: {k: untimed(v) if k == "dev_metrics" else v for k, v in run.items() if k != "compute_seconds"}
            for method, run in task["methods"].items()
        }
        out[name] = {"conditions": task["conditions"], "methods": methods, "answers": task["answers"]}
    return {"tasks": out, "summary": result["summary"]}


def test_first_token_rule() -> None:
    assert first_token_right(" cold", "cold")
    assert first_token_right(" co", "cold")
    assert not first_token_right("\n", "cold")
    assert not first_token_right(" colder", "cold")


def test_method_options_parse_json_values() -> None:
    options = parse_method_options(
        ["soft_injection.steps=20", "task_vector.layer=1", "icv.x=abc"], ["soft_injection", "task_vector", "icv"]
    )
    assert options == {"soft_injection": {"steps": 20}, "task_vector": {"layer": 1}, "icv": {"x": "abc"}}
    with pytest.raises(ValueError):
        parse_method_options(["steps=20"], ["soft_injection"])
    with pytest.raises(ValueError):
        parse_method_options(["function_vector.num_heads=2"], ["soft_injection"])


def test_in_process_writes_json_markdown_and_plots(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    config = small_config(["task_vector", "function_vector"])
    result = run_suite(config, LocalBackend(tiny_llama))
    paths = write_outputs(result, tmp_path)
    assert [p.name for p in paths] == ["results.json", "results.md", "per_task.png", "sweep.png"]
    for png in paths[2:]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000

    data = json.loads(paths[0].read_text())
    assert set(data) == {"config", "meta", "definitions", "tasks", "summary"}
    assert data["meta"]["backend"] == "in-process" and data["meta"]["model"] == "tiny:llama"
    assert set(data["definitions"]) >= {"first_token", "exact"}
    assert list(data["tasks"]) == TASKS
    for task in data["tasks"].values():
        assert len(task["answers"]) == SMALL["n_test"]
        assert set(task["conditions"]) == {"zero_shot", "few_shot"}
        for scores in task["conditions"].values():
            assert 0.0 <= scores["first_token"] <= 1.0 and 0.0 <= scores["exact"] <= 1.0
            assert len(scores["outputs"]) == SMALL["n_test"]
        assert list(task["methods"]) == ["task_vector", "function_vector"]
        for run in task["methods"].values():
            assert "error" not in run, run
            assert run["layers"] and run["strength"] > 0
            assert [p["multiple"] for p in run["sweep"]] == [0.0, 0.25, 0.5, 1.0, 1.5, 2.0]
            assert [p["strength"] for p in run["sweep"]] == [m * run["strength"] for m in (0, 0.25, 0.5, 1, 1.5, 2)]
            one = run["sweep"][3]
            assert (one["first_token"], one["exact"]) == (run["steered"]["first_token"], run["steered"]["exact"])
            # strength 0 is the plain model: the zero-shot numbers
            zero = run["sweep"][0]
            assert zero["first_token"] == task["conditions"]["zero_shot"]["first_token"]
            assert zero["exact"] == task["conditions"]["zero_shot"]["exact"]
    for metric in ("first_token", "exact"):
        assert set(data["summary"][metric]) == {"zero_shot", "few_shot", "task_vector", "function_vector"}
    assert [p["multiple"] for p in data["summary"]["sweep"]["task_vector"]] == config.multiples

    md = paths[1].read_text()
    assert "## First-token accuracy" in md and "## Exact-match accuracy" in md
    assert "| antonyms |" in md and "| zero-shot | 4-shot | task_vector | function_vector |" in md
    assert "non-empty prefix of the answer" in md


def test_http_backend_matches_in_process(tiny_llama: LoadedModel, server_factory: Callable[..., ServerProcess]) -> None:
    config = small_config(["task_vector"])
    local = run_suite(config, LocalBackend(tiny_llama))
    server = server_factory(STEER_MODEL="tiny:llama")
    with RemoteBackend(server.url) as backend:
        remote = run_suite(config, backend)
    assert remote["meta"]["backend"] == "http"
    assert remote["meta"]["fingerprint"] == local["meta"]["fingerprint"]
    assert numbers(remote) == numbers(local)


def test_cli_eval_in_process(tmp_path: Path) -> None:
    args = ["eval", "--model", "tiny:llama", "--tasks", "antonyms", "--methods", "task_vector"]
    args += ["--demos", "12", "--test", "4", "--k-shot", "3", "--max-new-tokens", "4", "--multiples", "0,1"]
    args += ["--option", "task_vector.num_prompts=8", "--out", str(tmp_path / "out"), "--no-progress"]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "first-token accuracy" in result.stdout
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["config"]["options"] == {"task_vector": {"num_prompts": 8}}
    assert data["meta"]["command"].startswith("steer eval --model tiny:llama --tasks antonyms")
    assert [p["multiple"] for p in data["tasks"]["antonyms"]["methods"]["task_vector"]["sweep"]] == [0.0, 1.0]


def test_cli_eval_rejects_unknown_task(tmp_path: Path) -> None:
    args = ["eval", "--model", "tiny:llama", "--tasks", "nope", "--out", str(tmp_path), "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "unknown task" in result.output


def test_auto_read_off_its_candidates_is_what_auto_computes(tiny_llama: LoadedModel) -> None:
    """With every candidate evaluated, the suite reads `auto` off their runs instead of computing them again:
    that must be exactly the vector `auto` itself keeps (same options, seed and held-out split)."""
    from steering.methods import compute_vector
    from steering.methods.registry import auto_candidates
    from steering.tasks.datasets import load_task, split_task

    fast = {"soft_injection": {"steps": 6, "eval_every": 3, "num_prompts": 4}}
    config = small_config([*auto_candidates(), "auto"], multiples=[0.0, 1.0], options=fast)
    config.tasks = ["antonyms"]
    result = run_suite(config, LocalBackend(tiny_llama))
    derived = result["tasks"]["antonyms"]["methods"]["auto"]
    assert derived["derived_from_candidates"] and derived["verdict"]["summary"]

    demos, _ = split_task(load_task("antonyms"), SMALL["n_demos"], SMALL["n_test"], 0)
    real = compute_vector(
        tiny_llama, demos, "auto", options={"seed": 0, "method_options": {"soft_injection": fast["soft_injection"]}}
    )
    assert derived["vector_method"] == real.method
    assert derived["layers"] == real.layers and derived["strength"] == real.default_strength

    def tried(candidates: list[dict[str, Any]]) -> list[tuple[str, Any, Any]]:  # in the order auto ran them
        return [(c["method"], c.get("dev_exact"), c.get("skipped")) for c in candidates]

    assert tried(real.metrics["auto"]["candidates"]) == tried(derived["dev_metrics"]["auto"]["candidates"])


def test_runs_split_by_task_merge_into_the_run_of_all_tasks(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    from scripts.merge_results import merge

    config = small_config(["task_vector"], multiples=[0.0, 1.0])
    whole = run_suite(config, LocalBackend(tiny_llama))
    parts = [
        run_suite(small_config(["task_vector"], multiples=[0.0, 1.0], tasks=[t]), LocalBackend(tiny_llama))
        for t in TASKS
    ]
    del parts[0]["config"]["tasks_dir"]  # as a run made before the setting existed: it had the default
    merged = merge(parts)
    assert numbers(merged) == numbers(whole)
    assert merged["config"] == whole["config"]
    with pytest.raises(SystemExit, match="more than their tasks"):
        merge(
            [
                parts[0],
                run_suite(small_config(["task_vector"], multiples=[1.0], tasks=[TASKS[1]]), LocalBackend(tiny_llama)),
            ]
        )
    with pytest.raises(SystemExit, match="more than one run"):
        merge([parts[0], parts[0]])


def test_runs_split_by_method_merge_into_the_run_of_all_methods(tiny_llama: LoadedModel) -> None:
    """A method measured after the others joins their results; `auto` is read off the candidates once all are in."""
    from scripts.merge_results import chose_among, merge
    from steering.methods.registry import auto_candidates

    fast = {"soft_injection": {"steps": 6, "eval_every": 3, "num_prompts": 4}, "context_tuning": {"epochs": 2}}
    whole = run_suite(
        small_config([*auto_candidates(), "auto"], tasks=["antonyms"], options=fast), LocalBackend(tiny_llama)
    )
    parts = [
        run_suite(small_config([m], tasks=["antonyms"], options=fast), LocalBackend(tiny_llama))
        for m in auto_candidates()
    ]
    merged = merge(parts)
    assert numbers(merged) == numbers(whole)
    assert merged["config"]["methods"] == whole["config"]["methods"]
    assert (
        merged["tasks"]["antonyms"]["methods"]["auto"]["verdict"]
        == whole["tasks"]["antonyms"]["methods"]["auto"]["verdict"]
    )
    *earlier, newest = auto_candidates()
    with_auto = {**fast, "auto": {"candidates": earlier, "method_options": fast}}
    before_newest = run_suite(  # `auto` computed for real among the candidates there were
        small_config([*earlier, "auto"], tasks=["antonyms"], options=with_auto), LocalBackend(tiny_llama)
    )
    real_auto = before_newest["tasks"]["antonyms"]["methods"]["auto"]
    assert "derived_from_candidates" not in real_auto
    # Its run keeps `auto`'s report, as one read off the candidates does: what it chose, why, among which.
    assert real_auto["dev_metrics"]["auto"]["chose"] == real_auto["vector_method"]
    assert real_auto["dev_metrics"]["auto"]["reason"]
    assert chose_among(real_auto) == set(earlier)
    newest_alone = run_suite(small_config([newest], tasks=["antonyms"], options=with_auto), LocalBackend(tiny_llama))
    remerged = merge([before_newest, newest_alone])  # an `auto` of fewer candidates gives way to one of all
    assert numbers(remerged) == numbers(whole)
    assert chose_among(remerged["tasks"]["antonyms"]["methods"]["auto"]) == set(auto_candidates())
    other_items = run_suite(
        small_config(["task_vector"], tasks=["antonyms"], options=fast, seed=1), LocalBackend(tiny_llama)
    )
    other_items["config"]["seed"] = 0  # same settings on paper, other test items in fact
    with pytest.raises(SystemExit, match="disagree"):
        merge([other_items, parts[1]])


def test_derived_auto_skips_what_auto_would_once_context_tuning_settles_it() -> None:
    from steering.eval.suite import auto_from_candidates
    from steering.methods.registry import auto_candidates

    def run(exact: float) -> dict[str, Any]:
        return {"dev_metrics": {"dev_steered_exact": exact, "dev_size": 10}, "steered": {"exact": exact}}

    runs = {m: run(0.3) for m in auto_candidates()}
    runs["context_tuning"] = run(0.8)  # 8 of 10: no candidate can lead it by more than chance
    derived = auto_from_candidates(runs)
    listed = derived["dev_metrics"]["auto"]["candidates"]
    assert derived["dev_metrics"]["auto"]["chose"] == "context_tuning" and listed[0]["method"] == "context_tuning"
    assert {c["method"] for c in listed if "skipped" in c} == set(auto_candidates()) - {"context_tuning"}
    assert "no candidate can beat it" in derived["dev_metrics"]["auto"]["reason"]
    runs["context_tuning"] = run(0.6)  # 6 of 10: one that answered all 10 would, so every candidate is read
    assert not any("skipped" in c for c in auto_from_candidates(runs)["dev_metrics"]["auto"]["candidates"])
