"""`steer eval`: zero-shot, k-shot in-context and steered accuracy on held-out items of packaged tasks.

For every task the items are split (seeded) into demonstrations and disjoint test items. The suite
scores the plain zero-shot query, a k-shot prompt built from the demonstrations, and each steering
method (vector computed from the demonstrations, the method's own layer/strength choice), plus a sweep
over multiples of the chosen strength. It runs in-process (`LocalBackend`) or against a running server
over HTTP (`RemoteBackend`, through `steering.client`); both produce the same numbers for the same seed
because both score the text of the same greedy generations:

- first-token accuracy: the greedy one-token completion, whitespace stripped, is a non-empty prefix of
  the answer (so " cold" and " co" count for "cold"; "\\n" or " colder" do not);
- exact match: greedy generation until the template's stop rule (a newline), stripped, equals the answer.

Outputs (`write_outputs`): results.json, results.md, sweep.png, per_task.png.

    from steering.evalsuite import EvalConfig, LocalBackend, run_suite, write_outputs

    config = EvalConfig(model="tiny:llama", tasks=["antonyms"], methods=["task_vector"])
    with LocalBackend.load(config.model) as backend:
        write_outputs(run_suite(config, backend), "eval-results")
"""

from __future__ import annotations

import json
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Protocol

import typer

from steering.client import Client
from steering.datasets import load_task, split_task, task_names
from steering.method_names import METHOD_NAMES
from steering.protocol import Demonstration, TaskInfo
from steering.templates import DEFAULT_TEMPLATE, few_shot_prompt, render_query, stop_strings

if TYPE_CHECKING:
    from steering.model import LoadedModel

DEFAULT_TASKS: tuple[str, ...] = (
    "antonyms",
    "country_capital",
    "english_french",
    "present_past",
    "singular_plural",
    "uppercase",
    "first_letter",
    "first_item",
)
DEFAULT_METHODS: tuple[str, ...] = ("task_vector", "function_vector", "icv", "soft_injection")
DEFAULT_MULTIPLES: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0)
DEFINITIONS = {
    "first_token": (
        "the greedy one-token completion of the prompt, whitespace stripped, is a non-empty prefix of the answer"
    ),
    "exact": "greedy generation until the template's stop rule (a newline), whitespace stripped, equals the answer",
    "sweep": (
        "strength = multiple x the strength the method chose on its held-out demonstrations "
        "(x0 = no steering: the zero-shot numbers)"
    ),
    "split": "demonstrations and test items are disjoint, drawn from a seeded shuffle of the task's items",
    "few_shot": "k demonstrations sampled (seeded) per test item from the task's demonstrations",
}


# --------------------------------------------------------------------------------------------- config


@dataclass
class EvalConfig:
    """What to evaluate; `options` maps a method to its option overrides."""

    model: str = "default"
    url: str | None = None
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    k_shot: int = 10
    n_demos: int = 40
    n_test: int = 20
    seed: int = 0
    multiples: list[float] = field(default_factory=lambda: list(DEFAULT_MULTIPLES))
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    max_new_tokens: int = 16

    def method_options(self, method: str) -> dict[str, Any]:
        """The options sent with a method: the overrides, with the suite's seed unless one is given."""
        return {"seed": self.seed, **self.options.get(method, {})}


def parse_list(text: str, known: Sequence[str], what: str) -> list[str]:
    """`a,b,c` (or `all`) checked against the known names."""
    if text.strip() == "all":
        return list(known)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ValueError(f"unknown {what} {', '.join(unknown) or '(none given)'}; choose from {', '.join(known)}")
    return names


def parse_method_options(pairs: Sequence[str], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """`method.key=value` pairs; values are read as JSON when they parse (numbers, true, lists), else as text."""
    options: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        target, sep, raw = pair.partition("=")
        method, dot, key = target.strip().partition(".")
        if not sep or not dot or not key:
            raise ValueError(f"expected method.key=value, got {pair!r}")
        if method not in methods:
            raise ValueError(f"option {pair!r} names method {method!r}, which is not evaluated")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        options.setdefault(method, {})[key] = value
    return options


def parse_multiples(text: str) -> list[float]:
    values = sorted({float(v) for v in text.split(",") if v.strip()})
    if not values:
        raise ValueError("give at least one strength multiple")
    return values


# -------------------------------------------------------------------------------------------- backends


@dataclass
class Prepared:
    """A computed vector, as either backend sees it: `handle` is a TaskVector (local) or a task id (remote)."""

    handle: Any
    method: str
    layers: list[int]
    strength: float
    compute_seconds: float
    dev_metrics: dict[str, Any]


@dataclass(frozen=True)
class Steer:
    handle: Any
    strength: float


StageFn = Callable[[str], None]


class Backend(Protocol):
    def info(self) -> dict[str, Any]: ...

    def prepare(
        self, name: str, demos: list[Demonstration], method: str, options: dict[str, Any], stage: StageFn
    ) -> Prepared: ...

    def complete(
        self, prompts: Sequence[str], steer: Steer | None, max_new_tokens: int, stop: Sequence[str]
    ) -> list[str]: ...

    def close(self) -> None: ...


def scalar_metrics(metrics: dict[str, Any] | None) -> dict[str, Any]:
    """A vector's dev metrics without the scan tables and timings (those differ in shape or run to run)."""
    return {
        k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float, str, bool)) and k != "compute_seconds"
    }


def stage_text(info: dict[str, Any]) -> str:
    """`training 40/100` from a method's progress report."""
    text = str(info.get("stage", ""))
    if info.get("step") is not None:
        text += f" {info['step']}/{info.get('steps', '?')}"
    return text


class LocalBackend:
    """Computes vectors and generates in this process."""

    def __init__(self, lm: LoadedModel, batch_size: int = 20) -> None:
        from steering.engine import Engine

        self.lm, self.batch_size, self.engine = lm, batch_size, Engine(lm)

    @classmethod
    def load(cls, model: str = "default", batch_size: int = 20) -> LocalBackend:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # only takes effect before torch starts its threads
        from steering.model import load_model

        return cls(load_model(model), batch_size)

    def __enter__(self) -> LocalBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def info(self) -> dict[str, Any]:
        import torch

        return {
            "backend": "in-process",
            "model": self.lm.name,
            "fingerprint": self.lm.fingerprint,
            "device": str(self.lm.device),
            "dtype": str(self.lm.dtype).removeprefix("torch."),
            "torch_threads": torch.get_num_threads(),
        }

    def prepare(
        self, name: str, demos: list[Demonstration], method: str, options: dict[str, Any], stage: StageFn
    ) -> Prepared:
        from steering.methods import compute_vector

        vector = compute_vector(self.lm, demos, method, options=options, progress=lambda info: stage(stage_text(info)))
        return Prepared(
            vector,
            vector.method,
            list(vector.layers),
            float(vector.default_strength),
            vector.compute_seconds,
            scalar_metrics(vector.metrics),
        )

    def complete(
        self, prompts: Sequence[str], steer: Steer | None, max_new_tokens: int, stop: Sequence[str]
    ) -> list[str]:
        from steering.engine import GenerationRequest
        from steering.inject import SteeringTerm

        terms = (SteeringTerm(steer.handle, steer.strength),) if steer is not None else ()
        texts: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            requests = [
                GenerationRequest(self.engine.encode(p), terms, max_new_tokens=max_new_tokens, stop=tuple(stop))
                for p in prompts[start : start + self.batch_size]
            ]
            texts.extend(r.text for r in self.engine.generate(requests))
        return texts

    def close(self) -> None:
        pass


class RemoteBackend:
    """Registers tasks on a running server and generates through /v1/generate (greedy, temperature 0)."""

    def __init__(self, url: str, api_key: str | None = None, *, concurrency: int = 8, timeout: float = 3600.0):
        self.client = Client(url, api_key or "", timeout=300.0)
        self.concurrency, self.timeout = concurrency, timeout
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="eval-http")

    def __enter__(self) -> RemoteBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def info(self) -> dict[str, Any]:
        ready = self.client.ready()
        return {
            "backend": "http",
            "url": self.client.base_url,
            "model": ready.get("model"),
            "fingerprint": ready.get("fingerprint"),
        }

    def prepare(
        self, name: str, demos: list[Demonstration], method: str, options: dict[str, Any], stage: StageFn
    ) -> Prepared:
        def progress(info: TaskInfo) -> None:
            stage(f"{info.status} {stage_text(info.progress or {})}".strip())

        created = self.client.register(demos, method=method, name=name, options=options)
        info = self.client.wait(created.id, timeout=self.timeout, poll_interval=0.25, on_progress=progress)
        metrics = info.metrics or {}
        return Prepared(
            info.id,
            info.method,  # the method that made the vector (for `auto`, the one it chose)
            list(info.layers or []),
            float(info.default_strength if info.default_strength is not None else 1.0),
            float(metrics.get("compute_seconds", 0.0)),
            scalar_metrics(metrics),
        )

    def complete(
        self, prompts: Sequence[str], steer: Steer | None, max_new_tokens: int, stop: Sequence[str]
    ) -> list[str]:
        steering = [(steer.handle, steer.strength)] if steer is not None else None

        def one(prompt: str) -> str:
            response = self.client.generate(
                prompt, steering=steering, max_new_tokens=max_new_tokens, temperature=0.0, stop=list(stop) or None
            )
            return response.text

        return list(self._pool.map(one, prompts))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.client.close()


@contextmanager
def open_backend(config: EvalConfig, api_key: str | None = None) -> Iterator[Backend]:
    backend: Backend = RemoteBackend(config.url, api_key) if config.url else LocalBackend.load(config.model)
    try:
        yield backend
    finally:
        backend.close()


# -------------------------------------------------------------------------------------------- progress


class Reporter(Protocol):
    def begin(self, total: int) -> None: ...

    def status(self, text: str) -> None: ...

    def advance(self) -> None: ...


class NullReporter:
    def begin(self, total: int) -> None:
        pass

    def status(self, text: str) -> None:
        pass

    def advance(self) -> None:
        pass


class RichReporter:
    """A rich progress bar on stderr (steps done / total, current step and stage); plain lines when not a terminal."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        columns = (
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        self.console = Console(stderr=True)
        self.progress = Progress(*columns, console=self.console, disable=not self.console.is_terminal)
        self.task = self.progress.add_task("starting", total=None)
        self.started, self.done, self.total, self.last = time.perf_counter(), 0, 0, ""

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def begin(self, total: int) -> None:
        self.total = total
        self.progress.update(self.task, total=total)

    def status(self, text: str) -> None:
        self.progress.update(self.task, description=text[:70])
        shape = "".join(c for c in text if not c.isdigit())  # a new stage, not just a new step count
        if not self.console.is_terminal and shape != self.last:
            elapsed = time.perf_counter() - self.started
            self.console.print(f"[{elapsed:7.1f} s] {self.done}/{self.total} {text}", highlight=False)
        self.last = shape

    def advance(self) -> None:
        self.done += 1
        self.progress.advance(self.task)


# ----------------------------------------------------------------------------------------------- scoring


def first_token_right(text: str, answer: str) -> bool:
    piece = text.strip()
    return bool(piece) and answer.strip().startswith(piece)


def exact_right(text: str, answer: str) -> bool:
    return text.strip() == answer.strip()


def accuracy(texts: Sequence[str], answers: Sequence[str], right: Callable[[str, str], bool]) -> float:
    return sum(right(t, a) for t, a in zip(texts, answers, strict=True)) / max(len(answers), 1)


@dataclass
class Probe:
    """One task's test queries, its k-shot prompts and the answers."""

    queries: list[str]
    few_shot: list[str]
    answers: list[str]
    stop: list[str]


def build_probe(demos: Sequence[Demonstration], test: Sequence[Demonstration], k: int, seed: int) -> Probe:
    rng = random.Random(seed)
    template = DEFAULT_TEMPLATE
    shots = [rng.sample(list(demos), min(k, len(demos))) for _ in test]
    return Probe(
        queries=[render_query(template, d.input) for d in test],
        few_shot=[few_shot_prompt(template, s, d.input) for s, d in zip(shots, test, strict=True)],
        answers=[d.output for d in test],
        stop=stop_strings(template),
    )


def score(
    backend: Backend, prompts: Sequence[str], probe: Probe, steer: Steer | None, config: EvalConfig, keep: bool
) -> dict[str, Any]:
    """First-token and exact-match accuracy of one condition (with the generations when `keep`)."""
    firsts = backend.complete(prompts, steer, 1, ())
    full = backend.complete(prompts, steer, config.max_new_tokens, probe.stop)
    result: dict[str, Any] = {
        "first_token": accuracy(firsts, probe.answers, first_token_right),
        "exact": accuracy(full, probe.answers, exact_right),
    }
    if keep:
        result["outputs"] = full
    return result


# --------------------------------------------------------------------------------------------- the suite


def evaluate_method(
    backend: Backend,
    task: str,
    method: str,
    demos: list[Demonstration],
    probe: Probe,
    zero_shot: dict[str, Any],
    config: EvalConfig,
    reporter: Reporter,
) -> dict[str, Any]:
    prefix = f"{task} · {method}"
    reporter.status(f"{prefix}: computing")
    prepared = backend.prepare(
        f"eval:{task}:{method}",
        demos,
        method,
        config.method_options(method),
        lambda stage: reporter.status(f"{prefix}: {stage}"),
    )
    reporter.status(f"{prefix}: scoring")
    sweep = []
    steered: dict[str, Any] = {}
    for multiple in sorted({*config.multiples, 1.0}):
        strength = prepared.strength * multiple
        if multiple == 0.0:  # no steering at all: exactly the zero-shot run, no need to generate it again
            scores = zero_shot
        else:
            scores = score(backend, probe.queries, probe, Steer(prepared.handle, strength), config, multiple == 1.0)
        if multiple == 1.0:
            steered = scores
        if multiple in config.multiples:
            sweep.append({"multiple": multiple, "strength": strength, **_without_outputs(scores)})
    return {
        "vector_method": prepared.method,
        "layers": prepared.layers,
        "strength": prepared.strength,
        "compute_seconds": round(prepared.compute_seconds, 3),
        "dev_metrics": prepared.dev_metrics,
        "steered": steered,
        "sweep": sweep,
    }


def _without_outputs(scores: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in scores.items() if k != "outputs"}


def evaluate_task(backend: Backend, task: str, config: EvalConfig, reporter: Reporter) -> dict[str, Any]:
    started = time.perf_counter()
    demos, test = split_task(load_task(task), config.n_demos, config.n_test, config.seed)
    probe = build_probe(demos, test, config.k_shot, config.seed)
    result: dict[str, Any] = {"inputs": [d.input for d in test], "answers": probe.answers, "conditions": {}}
    reporter.status(f"{task}: zero-shot")
    result["conditions"]["zero_shot"] = score(backend, probe.queries, probe, None, config, keep=True)
    reporter.advance()
    reporter.status(f"{task}: {config.k_shot}-shot")
    result["conditions"]["few_shot"] = score(backend, probe.few_shot, probe, None, config, keep=True)
    reporter.advance()
    result["methods"] = {}
    for method in config.methods:
        try:
            result["methods"][method] = evaluate_method(
                backend, task, method, demos, probe, result["conditions"]["zero_shot"], config, reporter
            )
        except Exception as exc:  # one failing method must not lose the others' results
            result["methods"][method] = {"error": f"{type(exc).__name__}: {exc}"}
        reporter.advance()
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def run_suite(config: EvalConfig, backend: Backend, reporter: Reporter | None = None) -> dict[str, Any]:
    """Evaluate every task of the config on the backend; the result is what results.json holds."""
    reporter = reporter or NullReporter()
    reporter.begin(len(config.tasks) * (2 + len(config.methods)))
    started, when = time.perf_counter(), datetime.now(timezone.utc)
    meta = {**backend.info(), **machine_info(), "started": when.isoformat(timespec="seconds")}
    meta["command"] = reproduce_command(config)
    tasks = {task: evaluate_task(backend, task, config, reporter) for task in config.tasks}
    meta["seconds"] = round(time.perf_counter() - started, 1)
    reporter.status("done")
    return {
        "config": asdict(config),
        "meta": meta,
        "definitions": {**DEFINITIONS, "few_shot": f"k={config.k_shot}: {DEFINITIONS['few_shot']}"},
        "tasks": tasks,
        "summary": summarise(tasks, config),
    }


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }
    if "torch" in sys.modules:
        info["torch"] = sys.modules["torch"].__version__
    return info


def reproduce_command(config: EvalConfig) -> str:
    """The `steer eval` command line that runs this config."""
    parts = ["steer eval", f"--url {config.url}" if config.url else f"--model {config.model}"]
    parts += [f"--tasks {','.join(config.tasks)}", f"--methods {','.join(config.methods)}"]
    parts += [f"--k-shot {config.k_shot}", f"--demos {config.n_demos}", f"--test {config.n_test}"]
    parts += [f"--seed {config.seed}", f"--multiples {','.join(f'{m:g}' for m in config.multiples)}"]
    parts.append(f"--max-new-tokens {config.max_new_tokens}")
    for method, options in config.options.items():
        parts += [
            f"--option {method}.{key}={json.dumps(value, separators=(',', ':'))}" for key, value in options.items()
        ]
    return " ".join(parts)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def condition_scores(task: dict[str, Any], condition: str) -> dict[str, Any] | None:
    """The scores of `zero_shot`, `few_shot` or a method's steered run; None where that method failed."""
    if condition in task["conditions"]:
        return task["conditions"][condition]
    method = task["methods"].get(condition, {})
    return method.get("steered") if "error" not in method else None


def summarise(tasks: dict[str, Any], config: EvalConfig) -> dict[str, Any]:
    """Means over tasks: per condition, and per method per strength multiple."""
    conditions = ["zero_shot", "few_shot", *config.methods]
    summary: dict[str, Any] = {}
    for metric in ("first_token", "exact"):
        summary[metric] = {}
        for cond in conditions:
            found = [s[metric] for t in tasks.values() if (s := condition_scores(t, cond)) is not None]
            summary[metric][cond] = _mean(found)
    summary["sweep"] = {}
    for method in config.methods:
        runs = [t["methods"][method]["sweep"] for t in tasks.values() if "sweep" in t["methods"].get(method, {})]
        summary["sweep"][method] = [
            {
                "multiple": m,
                "first_token": _mean([r[i]["first_token"] for r in runs]),
                "exact": _mean([r[i]["exact"] for r in runs]),
            }
            for i, m in enumerate(sorted(config.multiples))
        ]
    return summary


# ---------------------------------------------------------------------------------------------- outputs


def condition_label(condition: str, k_shot: int) -> str:
    return {"zero_shot": "zero-shot", "few_shot": f"{k_shot}-shot"}.get(condition, condition)


def _pct(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}"


def accuracy_table(result: dict[str, Any], metric: str) -> list[str]:
    config = result["config"]
    conditions = ["zero_shot", "few_shot", *config["methods"]]
    header = ["task", *(condition_label(c, config["k_shot"]) for c in conditions)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, task in result["tasks"].items():
        cells = [_pct(s[metric]) if (s := condition_scores(task, c)) else "failed" for c in conditions]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    means = [_pct(result["summary"][metric][c], 1) for c in conditions]
    lines.append("| **mean** | " + " | ".join(f"**{m}**" for m in means) + " |")
    return lines


def settings_table(result: dict[str, Any]) -> list[str]:
    methods = result["config"]["methods"]
    lines = ["| task | " + " | ".join(methods) + " |", "|" + "---|" * (len(methods) + 1)]
    for name, task in result["tasks"].items():
        cells = []
        for method in methods:
            run = task["methods"].get(method, {})
            if "error" in run:
                cells.append("failed")
                continue
            layers = run["layers"]
            where = "layer " + ",".join(map(str, layers)) if len(layers) <= 3 else f"{len(layers)} layers"
            cells.append(f"{where}, s={run['strength']:g}, {run['compute_seconds']:.0f} s")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def sweep_table(result: dict[str, Any]) -> list[str]:
    multiples = sorted(result["config"]["multiples"])
    lines = ["| method | " + " | ".join(f"×{m:g}" for m in multiples) + " |", "|" + "---|" * (len(multiples) + 1)]
    for method, points in result["summary"]["sweep"].items():
        cells = [f"{_pct(p['first_token'], 1)} / {_pct(p['exact'], 1)}" for p in points]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def errors_list(result: dict[str, Any]) -> list[str]:
    return [
        f"- {name} · {method}: {run['error']}"
        for name, task in result["tasks"].items()
        for method, run in task["methods"].items()
        if "error" in run
    ]


def markdown(result: dict[str, Any]) -> str:
    config, meta = result["config"], result["meta"]
    lines = [
        f"# Steering evaluation: {meta.get('model')}",
        "",
        f"{len(result['tasks'])} tasks; {config['n_demos']} demonstrations and {config['n_test']} disjoint test "
        f"items per task (seed {config['seed']}); backend {meta.get('backend')}; {meta.get('seconds')} s.",
        "",
        "Accuracy in % on the test items. Definitions:",
        "",
        *(f"- **{k}**: {v}" for k, v in result["definitions"].items()),
        "",
        "## First-token accuracy",
        "",
        *accuracy_table(result, "first_token"),
        "",
        "## Exact-match accuracy",
        "",
        *accuracy_table(result, "exact"),
        "",
        "## Strength sweep (mean over tasks, first-token / exact, in %)",
        "",
        *sweep_table(result),
        "",
        "## Chosen settings (injection layers, strength s, time to compute the vector)",
        "",
        *settings_table(result),
        "",
    ]
    errors = errors_list(result)
    if errors:
        lines += ["## Failures", "", *errors, ""]
    return "\n".join(lines)


def write_outputs(result: dict[str, Any], out: str | Path) -> list[Path]:
    """results.json, results.md, sweep.png and per_task.png in `out` (created); returns the paths."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "results.json", folder / "results.md", folder / "sweep.png", folder / "per_task.png"]
    paths[0].write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    paths[1].write_text(markdown(result), encoding="utf-8")
    plot_sweep(result, paths[2])
    plot_per_task(result, paths[3])
    return paths


METRIC_LABELS = {"first_token": "first-token accuracy", "exact": "exact-match accuracy"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_sweep(result: dict[str, Any], path: Path) -> None:
    """Accuracy vs strength multiple: one panel per (metric, method), a thin line per task, the mean thick."""
    plt = _pyplot()
    methods = result["config"]["methods"]
    fig, axes = plt.subplots(2, len(methods), figsize=(3.6 * len(methods) + 1.8, 6.4), squeeze=False, sharey=True)
    colours = plt.get_cmap("tab10")
    for col, method in enumerate(methods):
        for row, metric in enumerate(("first_token", "exact")):
            ax = axes[row][col]
            for i, (name, task) in enumerate(result["tasks"].items()):
                points = task["methods"].get(method, {}).get("sweep")
                if points:
                    xs, ys = [p["multiple"] for p in points], [100 * p[metric] for p in points]
                    ax.plot(xs, ys, marker=".", lw=1.2, alpha=0.75, color=colours(i % 10), label=name)
            mean = [p for p in result["summary"]["sweep"][method] if p[metric] is not None]
            if mean:
                xs, ys = [p["multiple"] for p in mean], [100 * p[metric] for p in mean]
                ax.plot(xs, ys, marker="o", lw=3, color="black", label="mean")
            ax.set_title(f"{method}" if row == 0 else "", fontsize=11)
            ax.set_ylim(-3, 103)
            ax.grid(alpha=0.3)
            ticks = sorted(result["config"]["multiples"])
            ax.set_xticks(ticks, [f"{m:g}" for m in ticks])
            ax.tick_params(labelsize=8)
            if col == 0:
                ax.set_ylabel(f"{METRIC_LABELS[metric]} (%)")
            if row == 1:
                ax.set_xlabel("× chosen strength")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=9, frameon=False)
    fig.suptitle(f"Accuracy vs steering strength — {result['meta'].get('model')}", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1 - 1.6 / fig.get_figwidth(), 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_per_task(result: dict[str, Any], path: Path) -> None:
    """Grouped bars: for each task (and the mean), zero-shot, k-shot and every method."""
    plt = _pyplot()
    config = result["config"]
    conditions = ["zero_shot", "few_shot", *config["methods"]]
    names = [*result["tasks"], "mean"]
    width = 0.8 / len(conditions)
    fig, axes = plt.subplots(2, 1, figsize=(max(10.0, 1.25 * len(names) + 2.5), 8), sharex=True)
    colours = plt.get_cmap("tab10")
    for ax, metric in zip(axes, ("first_token", "exact"), strict=True):
        for j, cond in enumerate(conditions):
            values = [_bar_value(result, name, cond, metric) for name in names]
            xs = [i + (j - (len(conditions) - 1) / 2) * width for i in range(len(names))]
            bars = ax.bar(xs, values, width=width, color=colours(j % 10), label=condition_label(cond, config["k_shot"]))
            labels = [f"{v:.0f}" for v in values]
            ax.bar_label(bars, labels=labels, fontsize=6.5, rotation=90, padding=1.5, color="#333333")
        ax.set_ylabel(f"{METRIC_LABELS[metric]} (%)")
        ax.set_ylim(0, 112)
        ax.set_yticks(range(0, 101, 20))
        ax.grid(axis="y", alpha=0.3)
        ax.axvline(len(names) - 1.5, color="grey", lw=0.8, ls="--")
    axes[1].set_xticks(range(len(names)))
    axes[1].set_xticklabels(names, rotation=20, ha="right")
    axes[0].legend(ncol=len(conditions), loc="upper center", bbox_to_anchor=(0.5, 1.22), frameon=False)
    fig.suptitle(f"Accuracy per task — {result['meta'].get('model')}, {config['n_test']} test items per task", y=0.99)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _bar_value(result: dict[str, Any], task: str, condition: str, metric: str) -> float:
    if task == "mean":
        value = result["summary"][metric].get(condition)
    else:
        scores = condition_scores(result["tasks"][task], condition)
        value = scores[metric] if scores else None
    return 0.0 if value is None else 100 * value


# ------------------------------------------------------------------------------------------------- CLI


def eval_command(
    ctx: typer.Context,
    model: Annotated[str, typer.Option(help="In-process model: default, tiny:<family>, a hub id or a folder.")] = (
        "default"
    ),
    url: Annotated[
        str | None, typer.Option("--url", help="Evaluate through a running server at URL instead of in-process.")
    ] = None,
    tasks: Annotated[str, typer.Option(help="Comma-separated packaged tasks, or 'all'.")] = ",".join(DEFAULT_TASKS),
    methods: Annotated[str, typer.Option(help="Comma-separated steering methods.")] = ",".join(DEFAULT_METHODS),
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

    method_list = parse_list(methods, METHOD_NAMES, "method")
    config = EvalConfig(
        model=model,
        url=url,
        tasks=parse_list(tasks, task_names(), "task"),
        methods=method_list,
        k_shot=k_shot,
        n_demos=demos,
        n_test=test,
        seed=seed,
        multiples=parse_multiples(multiples),
        options=parse_method_options(option or [], method_list),
        max_new_tokens=max_new_tokens,
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


def markdown_summary(result: dict[str, Any]) -> str:
    return "\n".join(["first-token accuracy (%):", *accuracy_table(result, "first_token")])
