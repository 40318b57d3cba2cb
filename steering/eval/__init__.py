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

    from steering.eval import EvalConfig, LocalBackend, run_suite, write_outputs

    config = EvalConfig(model="tiny:llama", tasks=["antonyms"], methods=["task_vector"])
    with LocalBackend.load(config.model) as backend:
        write_outputs(run_suite(config, backend), "eval-results")

Modules: `config` (what to evaluate), `backends` (where), `scoring`, `suite`, `progress`, `report` and `plots`
(outputs), `command` (`steer eval`); `evaluator` holds the in-process `TaskEvaluator` used by the slow tests.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from steering.eval.backends import Backend, LocalBackend, RemoteBackend, open_backend
    from steering.eval.config import EvalConfig, parse_method_options
    from steering.eval.progress import NullReporter, Reporter, RichReporter
    from steering.eval.report import markdown, write_outputs
    from steering.eval.scoring import exact_right, first_token_right
    from steering.eval.suite import run_suite

# Each public name and the module that holds it, imported on first use: `steer` imports this package for its
# `eval` command's options, and the suite pulls in torch, which no other command needs (seconds at start-up).
_HOMES = {
    "Backend": "backends",
    "LocalBackend": "backends",
    "RemoteBackend": "backends",
    "open_backend": "backends",
    "EvalConfig": "config",
    "parse_method_options": "config",
    "NullReporter": "progress",
    "Reporter": "progress",
    "RichReporter": "progress",
    "markdown": "report",
    "write_outputs": "report",
    "exact_right": "scoring",
    "first_token_right": "scoring",
    "run_suite": "suite",
}

__all__ = [
    "Backend",
    "EvalConfig",
    "LocalBackend",
    "NullReporter",
    "RemoteBackend",
    "Reporter",
    "RichReporter",
    "exact_right",
    "first_token_right",
    "markdown",
    "open_backend",
    "parse_method_options",
    "run_suite",
    "write_outputs",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
