"""Property-based fuzzing of the whole OpenAPI contract with schemathesis, on the real app and a tiny model.

What holds for every generated request (valid and invalid ones, every operation; a server without keys,
one with keys called with a key, and the same called without one):
- no 5xx, no exception escaping the app, no request unanswered after `REQUEST_TIMEOUT_S` (a hang);
- every error answer is the service's error shape `{"error": {"type": str, "message": str, ...}}`, and a
  stream ends with its last event or with an error event in that shape (never an internal error);
- the status code, content type, headers and body are those the contract documents;
- a plain generation sent at the same time (so batched with the fuzzed one) is answered normally;
- with keys: nothing of another key's task is served, and /v1 answers no 2xx without a key.

The contract is the app's own `/openapi.json`, completed in `documented()` where the app leaves out what
it does (error responses, server-sent events, Prometheus text, `Location`, the OpenAI bodies, links); each
completion is a no-op once the app documents the same thing itself.

Requests reach the model and the store, not only validation: hooks aim a share of valid cases at tasks
computed beforehand (and at one that failed), repair generation bodies so they pass validation while
keeping edge sampling values, put odd strings in (lone surrogates, which schemathesis never generates),
draw method options by name, and send real exported vectors, whole or damaged, to the import. A stateful
run follows OpenAPI links from registering or importing a task to reading, exporting, generating with
and deleting it. Two sweeps complete the fuzzing: non-finite JSON numbers (which its client cannot send)
and method options the computation would refuse.

Bounded for CI (under a minute here, a few on 2 slow cores) and reproducible (derandomized, fixed seed,
no example database). Knobs (environment):
- `STEER_FUZZ_EXAMPLES=500` (default 25): examples per operation, 8x that for the busy ones; scenarios too;
- `STEER_FUZZ_STEPS`, `STEER_FUZZ_SCENARIOS`, `STEER_FUZZ_SEED`: the stateful run, another exploration;
- `STEER_FUZZ_REPORT=1`: record every distinct failure, go on, print them all at the end (with `-s`);
- `STEER_FUZZ_SHRINK=1`: shrink a failure to a smaller request (slower); `STEER_FUZZ_STATS=1`: status counts.

The ASGI apps are created at import (no model is loaded then) because `schemathesis.pytest.from_fixture`
does not work with pytest 9 (it sets `Node._nodeid`, which pytest 9 no longer has). Their lifespan (model,
store, batcher) runs on schemathesis' own event loop: the module fixture starts it and prepares the tasks;
schemathesis' pytest plugin ends it after every test and the next request starts it again (the SQLite
store keeps the tasks on disk).
"""

from __future__ import annotations

import base64
import copy
import json
import os
import shutil
import struct
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import strategies as st
from schemathesis import Case, CheckContext, HookContext, Response
from schemathesis.core.failures import FailureGroup
from schemathesis.core.parameters import ParameterLocation
from schemathesis.generation.meta import TestPhase
from schemathesis.python import asgi as schemathesis_asgi

from app.main import create_app
from tests.api_helpers import ANTONYMS, FAILING_TASK, task_body
from tests.api_helpers import settings as app_settings

# ------------------------------------------------------------------------------------------ knobs

FUZZ_EXAMPLES = int(os.environ.get("STEER_FUZZ_EXAMPLES", "25"))  # per operation, fuzzing phase
BUSY_FACTOR = 8  # generation, registration and import get this many times more
BUSY_PATHS = "^/v1/(generate|completions|chat/completions|tasks|tasks/import)$"
FUZZ_STEPS = int(os.environ.get("STEER_FUZZ_STEPS", "10"))  # per stateful scenario
FUZZ_SCENARIOS = int(os.environ.get("STEER_FUZZ_SCENARIOS", str(FUZZ_EXAMPLES)))  # stateful scenarios
SHRINK = os.environ.get("STEER_FUZZ_SHRINK", "") not in ("", "0")
# Report mode: record every distinct failure and go on, print them all at the end (the test still fails).
REPORT = os.environ.get("STEER_FUZZ_REPORT", "") not in ("", "0")
SEED = int(os.environ.get("STEER_FUZZ_SEED", "20240601"))
REQUEST_TIMEOUT_S = 60.0  # a request still unanswered after this is a hang
MAX_NEW_TOKENS = 32  # the server's limit (the default of /v1/generate): generated requests stay cheap
API_KEY = "fuzz-key-0123456789"
OTHER_KEY = "fuzz-key-other-owner"  # owns a task the fuzzing (with API_KEY) must never reach
JSON = "application/json"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# ------------------------------------------------------------------------------------------ the contract

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {"type": {"type": "string", "minLength": 1}, "message": {"type": "string", "minLength": 1}},
        }
    },
}
ERROR_RESPONSE: dict[str, Any] = {
    "description": "The service's error shape",
    "content": {JSON: {"schema": ERROR_SCHEMA}},
}
# /readyz answers 503 with its own body (a probe reads `status`), not the error shape.
UNREADY_RESPONSE: dict[str, Any] = {
    "description": "The store is unreachable",
    "content": {JSON: {"schema": {"type": "object", "required": ["status"]}}},
}
SSE = "text/event-stream"
# Before OpenAPI 3.2 the `schema` of an event stream describes each event.
SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["data"],
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
}
STREAMING_PATHS = ("/v1/generate", "/v1/completions", "/v1/chat/completions")
GENERATION_PATHS = STREAMING_PATHS
IMPORT_PATH = "/v1/tasks/import"
UNAUTHENTICATED_PATHS = ("/healthz", "/readyz", "/metrics")


LOCATION: dict[str, Any] = {
    "description": "Where the task is read",
    "required": True,
    "schema": {"type": "string", "pattern": "^/v1/tasks/task-[0-9a-f]+$"},
}
_USAGE = {
    "type": "object",
    "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
    "properties": {
        k: {"type": "integer", "minimum": 0} for k in ("prompt_tokens", "completion_tokens", "total_tokens")
    },
}
_FINISH = {"enum": ["stop", "length"]}


def _openai_body(object_: str, choice: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices", "usage"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": object_},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {"type": "array", "minItems": 1, "maxItems": 1, "items": choice},
            "usage": _USAGE,
        },
    }


# The OpenAI routes answer plain dicts (no response model): their bodies as the OpenAI clients read them.
OPENAI_BODIES: dict[str, dict[str, dict[str, Any]]] = {
    "/v1/completions": {
        "post": _openai_body(
            "text_completion",
            {
                "type": "object",
                "required": ["index", "text", "finish_reason"],
                "properties": {"index": {"const": 0}, "text": {"type": "string"}, "finish_reason": _FINISH},
            },
        )
    },
    "/v1/chat/completions": {
        "post": _openai_body(
            "chat.completion",
            {
                "type": "object",
                "required": ["index", "message", "finish_reason"],
                "properties": {
                    "index": {"const": 0},
                    "message": {
                        "type": "object",
                        "required": ["role", "content"],
                        "properties": {"role": {"const": "assistant"}, "content": {"type": "string"}},
                    },
                    "finish_reason": _FINISH,
                },
            },
        )
    },
    "/v1/models": {
        "get": {
            "type": "object",
            "required": ["object", "data"],
            "properties": {
                "object": {"const": "list"},
                "data": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["id", "object", "owned_by"],
                        "properties": {"id": {"type": "string"}, "object": {"const": "model"}},
                    },
                },
            },
        }
    },
}


def _any_schema(response: dict[str, Any]) -> bool:
    """The response documents a JSON body without saying anything about it (`{}`)."""
    schema = response.get("content", {}).get(JSON, {}).get("schema")
    vague = isinstance(schema, dict) and not set(schema) - {"title", "type", "additionalProperties"}
    return vague and schema.get("type") in (None, "object") and schema.get("additionalProperties", True) is True


def _is_validation_error_ref(response: dict[str, Any]) -> bool:
    schema = response.get("content", {}).get(JSON, {}).get("schema", {})
    return str(schema.get("$ref", "")).endswith("/HTTPValidationError")


def _operation_id(raw: dict[str, Any], method: str, path: str) -> str:
    return raw["paths"][path][method]["operationId"]


def _links(raw: dict[str, Any]) -> dict[str, Any]:
    """Where a registered or imported task leads: read it, export it, generate with it, delete it."""
    task = "$response.body#/id"
    steering = [{"task": task}]
    whole_body = {"x-schemathesis": {"merge_body": False}}
    return {
        "GetTask": {"operationId": _operation_id(raw, "get", "/v1/tasks/{task_id}"), "parameters": {"task_id": task}},
        "ExportVector": {
            "operationId": _operation_id(raw, "get", "/v1/tasks/{task_id}/vector"),
            "parameters": {"task_id": task},
        },
        "Generate": {
            "operationId": _operation_id(raw, "post", "/v1/generate"),
            "requestBody": {"input": "hot", "steering": steering, "max_new_tokens": 4},
            **whole_body,
        },
        "Complete": {
            "operationId": _operation_id(raw, "post", "/v1/completions"),
            "requestBody": {"prompt": "Q: hot\nA:", "max_tokens": 4, "steering": steering},
            **whole_body,
        },
        "Chat": {
            "operationId": _operation_id(raw, "post", "/v1/chat/completions"),
            "requestBody": {
                "messages": [{"role": "user", "content": "hot"}],
                "max_tokens": 4,
                "stream": True,
                "steering": steering,
            },
            **whole_body,
        },
        "DeleteTask": {
            "operationId": _operation_id(raw, "delete", "/v1/tasks/{task_id}"),
            "parameters": {"task_id": task},
        },
    }


def documented(raw: dict[str, Any]) -> dict[str, Any]:
    """The app's OpenAPI document, completed where the app leaves out what it does (each step a no-op once it doesn't).

    - errors: every operation may answer 4xx in the error shape (FastAPI documents a 422 with its own
      `HTTPValidationError` body, which the app never sends); /v1 operations may answer 503 (store down,
      queue full, shutting down);
    - `stream: true` answers server-sent events; /metrics answers Prometheus text;
    - the import takes the vector file as a raw octet-stream body;
    - registering and importing answer a `Location` header;
    - the OpenAI routes (which answer plain dicts) answer the bodies OpenAI clients read;
    - links from registering or importing a task to the operations that take its id.
    """
    raw = copy.deepcopy(raw)
    components = raw.setdefault("components", {}).setdefault("schemas", {})
    for path, item in raw["paths"].items():
        for method, operation in item.items():
            responses = operation.setdefault("responses", {})
            for status, response in list(responses.items()):
                if status[0] in "45" and _is_validation_error_ref(response):
                    responses[status] = copy.deepcopy(ERROR_RESPONSE)
            if not any(status in responses for status in ("4XX", "default")):
                responses["4XX"] = copy.deepcopy(ERROR_RESPONSE)
            if path.startswith("/v1/") and not any(status in responses for status in ("503", "5XX", "default")):
                responses["503"] = copy.deepcopy(ERROR_RESPONSE)
            if path == "/readyz":
                responses.setdefault("503", copy.deepcopy(UNREADY_RESPONSE))
            if path == "/metrics":
                content = responses["200"].setdefault("content", {})
                if "text/plain" not in content:
                    content.pop(JSON, None)
                    content["text/plain"] = {"schema": {"type": "string"}}
            if path in STREAMING_PATHS and method == "post":
                responses["200"].setdefault("content", {}).setdefault(SSE, {"schema": SSE_EVENT})
            if method == "post" and path in ("/v1/tasks", IMPORT_PATH):
                for status in ("200", "201", "202"):
                    if status in responses:
                        responses[status].setdefault("headers", {}).setdefault("Location", copy.deepcopy(LOCATION))
            if method in OPENAI_BODIES.get(path, {}) and _any_schema(responses.get("200", {})):
                responses["200"]["content"][JSON]["schema"] = copy.deepcopy(OPENAI_BODIES[path][method])
            if path == IMPORT_PATH and method == "post" and "requestBody" not in operation:
                operation["requestBody"] = {
                    "required": True,
                    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
                }
    links = _links(raw)
    for path, statuses in (("/v1/tasks", ("200", "202")), (IMPORT_PATH, ("200", "201"))):
        for status in statuses:
            response = raw["paths"][path]["post"]["responses"].get(status)
            if response is not None:
                response.setdefault("links", {}).update(copy.deepcopy(links))
    if not _refers_to(raw, "HTTPValidationError"):
        components.pop("HTTPValidationError", None)
    return raw


def _refers_to(raw: dict[str, Any], name: str) -> bool:
    return f"#/components/schemas/{name}" in json.dumps(raw["paths"])


# ------------------------------------------------------------------------------------------ the servers


class Server:
    """One app under test, as an ASGI app that records what escapes it, plus what the fuzzing aims at.

    Starlette answers an unhandled exception with a 500 and then re-raises it to the server, which logs
    it. Here nothing would log it, and the test client would turn it into an exception without the answer:
    this keeps the answer (so the checks see the 500 and its body) and the traceback (for the report).
    """

    def __init__(self, name: str, app: FastAPI, keys: bool) -> None:
        self.name, self.app = name, app
        self.headers = {"Authorization": f"Bearer {API_KEY}"} if keys else {}
        self.errors: list[str] = []
        self.witness: str | None = None  # what happened to the plain request sent with the current one
        self.ready_tasks: list[str] = []  # tasks computed before fuzzing starts
        self.failed_task = ""  # a task whose computation failed
        self.foreign_task = ""  # with keys: a task of another key (aimed at, never to be served)
        self.vector = b""  # the first ready task's vector, as exported (safetensors)
        self.gguf = b""  # the second one's, as a GGUF control vector

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception as exc:
            if scope["type"] != "http":
                raise
            self.errors.append("".join(traceback.format_exception(exc)))
            if not started:
                raise

    def task_ids(self) -> list[str]:
        return [*self.ready_tasks, self.failed_task, *([self.foreign_task] if self.foreign_task else [])]


# Created by the app's lifespan (not at import: collecting this module leaves nothing behind), removed at the end.
DATA = Path(tempfile.gettempdir()) / f"steer-fuzz-{os.getpid()}-{time.monotonic_ns()}"
# Computed before fuzzing (posting one again answers 200 at once); contrastive vectors export as GGUF too.
KNOWN_TASKS = (task_body(ANTONYMS, method="task_vector"), task_body(ANTONYMS, method="contrastive"))


def _server(name: str, keys: bool) -> Server:
    config = app_settings(DATA / name, max_new_tokens=MAX_NEW_TOKENS, api_keys=f"{API_KEY},{OTHER_KEY}" if keys else "")
    return Server(name, create_app(config), keys)


OPEN = _server("open", keys=False)
KEYED = _server("keyed", keys=True)


def fuzz_config(*, headers: dict[str, str], examples: int, coverage: bool) -> schemathesis.Config:
    busy = {"max-examples": examples * BUSY_FACTOR}
    return schemathesis.Config.from_dict(
        {
            # Where the bugs live (sampling, steering, chat rendering, vector files) gets more examples.
            "operations": [{"include-path-regex": BUSY_PATHS, "generation": busy}],
            "seed": SEED,
            "suppress-health-check": ["all"],  # a slow CI machine must not fail on Hypothesis' timing checks
            # Reproductions as sent: sanitizing would print `"max_new_tokens": "[Filtered]"` (a "token" key)
            # and hide the test-only key.
            "output": {"sanitization": {"enabled": False}},
            "headers": headers,
            "request-timeout": REQUEST_TIMEOUT_S,
            "max-stream-events": MAX_NEW_TOKENS + 10,  # a whole stream: a piece per token, then the end
            "generation": {
                "mode": "all",  # valid requests and invalid ones
                "max-examples": examples,
                "deterministic": True,
                "database": "none",
                "no-shrink": not SHRINK,
            },
            "phases": {
                "examples": {"enabled": True},
                "coverage": {"enabled": coverage},  # boundary values of every keyword, deterministic
                "fuzzing": {"enabled": True},
                "stateful": {"enabled": True, "max-steps": FUZZ_STEPS},
            },
            "checks": {
                # Valid by the schema is not always acceptable: limits depend on the server (token limits,
                # layers of the loaded model) and ids must exist. Those answers are checked as errors.
                "positive_data_acceptance": {"enabled": False},
                # Starlette's 405 lists the methods of the matched route only (`OPTIONS /v1/tasks` says
                # `Allow: POST`, not `GET, POST`): a framework limitation, reported, not checked here.
                "allow_header_conformance": {"enabled": False},
                # Pydantic's lax mode accepts what the schema calls the wrong type (`"stream": 0` is false,
                # `"max_tokens": "4"` is 4): every such "accepted invalid data" failure was one of those.
                "negative_data_rejection": {"enabled": False},
            },
        }
    )


def contract_schema(server: Server, config: schemathesis.Config) -> Any:
    schema = schemathesis.openapi.from_dict(documented(server.app.openapi()), config=config)
    schema.app = server
    schema.hook(flatmap_case)
    return schema


# ------------------------------------------------------------------------------------------ hooks


def _server_of(context: HookContext) -> Server | None:
    app = context.operation.app if context.operation is not None else None
    return app if isinstance(app, Server) else None


def _aimed(body: dict[str, Any], task: str, keep_knobs: bool) -> dict[str, Any]:
    """The body with its steering entries (or a new one) pointing at `task`."""
    body = dict(body)
    entries = body.get("steering")
    if not isinstance(entries, list) or not entries:
        body["steering"] = [{"task": task}]
        return body
    aimed = []
    for entry in entries:
        if isinstance(entry, dict):
            entry = {**entry, "task": task} if keep_knobs else {"task": task}
        aimed.append(entry)
    body["steering"] = aimed
    return body


ODD_JSON = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),  # the client cannot send NaN: see test_non_finite_numbers
    st.text(max_size=8),
    st.lists(st.integers(min_value=-(2**40), max_value=2**40), max_size=4),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)
# Values at the edges of what sampling, steering and chat take: tiny and huge floats, seeds past 64 bits,
# layer lists with many repeats, content parts of odd shapes.
EDGE_FLOATS = st.one_of(
    st.sampled_from([0.0, -0.0, 5e-324, 1e-300, 1e-8, 1e-3, 0.7, 1.0, 2.0, 5.0, 50.0, 1e300]),
    st.floats(min_value=0, max_value=5, allow_nan=False),
)
EDGE_SEEDS = st.one_of(
    st.none(), st.sampled_from([0, -1, 2**31, 2**63, 2**64 - 1, 2**64, 2**64 + 1, -(2**63) - 1]), st.integers()
)
EDGE_LAYERS = st.one_of(
    st.none(),
    st.lists(st.integers(min_value=-2, max_value=6), max_size=6),
    st.builds(lambda layer, n: [layer] * n, st.integers(min_value=0, max_value=3), st.sampled_from([2, 100, 5000])),
)
# What a repaired OpenAI body keeps: the fields the engine honours. The others (`model`, `best_of`, penalties,
# tools, ...) are refused unless neutral, so a generated value would stop the request before the engine.
OPENAI_FIELDS_THE_ENGINE_USES = frozenset(
    {"max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "stop", "stream", "echo", "steering"}
)
PART_TEXT = st.one_of(st.text(max_size=12), ODD_JSON)
CONTENT_PARTS = st.lists(
    st.one_of(
        st.fixed_dictionaries({"type": st.just("text"), "text": PART_TEXT}),
        st.fixed_dictionaries(
            {"type": st.one_of(st.sampled_from(["input_text", "image_url", "refusal"]), ODD_JSON)},
            optional={"text": PART_TEXT},
        ),
        ODD_JSON,
    ),
    min_size=1,
    max_size=3,
)


# Method options are a free-form object in the schema; these are the numbers the methods read from it
# (the fuzzing draws options by these names, test_non_finite_numbers sets each to NaN and infinities).
OPTION_NUMBERS = {
    "task_vector": ["k_shot", "num_prompts", "dev_fraction", "seed", "layer", "strength"],
    "function_vector": ["num_heads", "num_corrupted"],
    "soft_injection": ["steps", "lr", "batch_size", "eval_every", "patience", ["layers", 0]],
    "auto": ["time_budget_s"],
}

OPTION_VALUES = st.one_of(
    st.integers(min_value=-2, max_value=8), st.sampled_from([0.0, 1e-9, 0.5, 0.9, 1.0, 1e9, 2**63, 2**64]), ODD_JSON
)
OPTIONS = st.dictionaries(
    st.sampled_from(sorted({n if isinstance(n, str) else n[0] for names in OPTION_NUMBERS.values() for n in names})),
    OPTION_VALUES,
    max_size=3,
)
TASKS_WITH_OPTIONS = st.fixed_dictionaries(
    {
        "demonstrations": st.lists(
            st.fixed_dictionaries({"input": st.text(max_size=6), "output": st.text(max_size=6)}), min_size=1, max_size=6
        ),
        "method": st.sampled_from(["task_vector", "function_vector", "icv", "contrastive", "soft_injection", "auto"]),
    },
    optional={
        "options": st.one_of(
            OPTIONS,
            st.builds(
                lambda candidates, per_method: {"candidates": candidates, "method_options": per_method},
                st.lists(st.sampled_from(["task_vector", "icv", "contrastive", "bogus"]), max_size=2),
                st.dictionaries(st.sampled_from(["task_vector", "soft_injection", "bogus"]), OPTIONS, max_size=2),
            ),
        ),
        "template": st.fixed_dictionaries(
            {"example": st.sampled_from(["{input}{output}", "{input} -> {output}", "{output}", "{input}{output}{x}"])},
            optional={"query": st.sampled_from(["{input}", "{input} ->", "{{input}}", "{input}{0}"])},
        ),
    },
)


# Strings the generated data never holds: schemathesis leaves out lone surrogates (JSON can carry them as
# `"\ud800"`), and rarely draws control, format or combining characters, or long text.
ODD_TEXT = st.one_of(
    st.sampled_from(["\ud800", "a\udfffb", "\x00", "\u202e", "e\u0301", "\ufeff", "\U0001f600", "x" * 3000]),
    st.text(st.characters(categories=["Cs", "Cc", "Cf", "Mn", "Zs"]), min_size=1, max_size=4),
)


def _string_leaves(value: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    if isinstance(value, str):
        yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _string_leaves(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _string_leaves(item, (*path, index))


@st.composite
def _with_odd_strings(draw: st.DrawFn, body: Any) -> Any:
    """The body with one or two of its strings replaced by odd text."""
    leaves = list(_string_leaves(body))
    if not leaves:
        return body
    body = copy.deepcopy(body)
    for path in draw(st.lists(st.sampled_from(leaves), min_size=1, max_size=2, unique=True)):
        container = body
        for key in path[:-1]:
            container = container[key]
        container[path[-1]] = draw(ODD_TEXT)
    return body


@st.composite
def _repaired(draw: st.DrawFn, body: dict[str, Any], path: str, tasks: list[str]) -> dict[str, Any]:
    """A body made to pass validation where generated ones rarely do, keeping (or drawing) edge sampling values.

    Without this most generated requests stop at a 422 (several prompts at once, a token limit over the
    server's, a task id that does not exist) and never reach the batcher, the engine or the steering hooks.
    """
    body = {k: v for k, v in body.items() if k not in ("prompt", "input", "messages")}
    if path != "/v1/generate":  # the OpenAI fields the server refuses unless neutral, and a model it serves
        body = {k: v for k, v in body.items() if k in OPENAI_FIELDS_THE_ENGINE_USES}
    text = draw(st.text(min_size=1, max_size=20))
    if path == "/v1/generate":
        which = draw(st.sampled_from(["prompt", "input", "messages"]))
        body[which] = [{"role": "user", "content": text}] if which == "messages" else text
        body["max_new_tokens"] = draw(st.integers(min_value=1, max_value=MAX_NEW_TOKENS))
    elif path == "/v1/completions":
        body["prompt"] = text
        body["max_tokens"] = draw(st.integers(min_value=1, max_value=MAX_NEW_TOKENS))
        body.pop("max_completion_tokens", None)
        body.pop("logprobs", None)
    else:
        content = draw(st.one_of(st.just(text), CONTENT_PARTS))
        body["messages"] = [{"role": draw(st.sampled_from(["user", "system", "developer"])), "content": content}]
        body["max_tokens"] = draw(st.integers(min_value=1, max_value=MAX_NEW_TOKENS))
        body.pop("max_completion_tokens", None)
        body.pop("logprobs", None)
    body.pop("n", None)
    if draw(st.booleans()):
        body["temperature"] = draw(EDGE_FLOATS)
        body["seed"] = draw(EDGE_SEEDS)
    if draw(st.booleans()):
        strengths = st.none() | EDGE_FLOATS | EDGE_FLOATS.map(lambda x: -x)
        count = draw(st.integers(min_value=1, max_value=3))
        body["steering"] = [
            {"task": draw(st.sampled_from(tasks)), "strength": draw(strengths), "layers": draw(EDGE_LAYERS)}
            for _ in range(count)
        ]
    else:
        body["steering"] = []
    return body


def _safetensors_parts(data: bytes) -> tuple[dict[str, Any], bytes]:
    (size,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + size]), data[8 + size :]


def _safetensors_join(header: dict[str, Any], payload: bytes) -> bytes:
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + payload


def _with_metadata(data: bytes, key: str, value: Any, drop: bool) -> bytes:
    """The vector with one field of its `steering` metadata replaced by `value` (or dropped)."""
    header, payload = _safetensors_parts(data)
    meta = json.loads(header["__metadata__"]["steering"])
    if drop:
        meta.pop(key, None)
    else:
        meta[key] = value
    header["__metadata__"]["steering"] = json.dumps(meta)
    return _safetensors_join(header, payload)


def _with_tensor_header(data: bytes, field: str, value: Any) -> bytes:
    header, payload = _safetensors_parts(data)
    name = next(k for k in header if k != "__metadata__")
    header[name][field] = value
    return _safetensors_join(header, payload)


def _import_bodies(server: Server) -> st.SearchStrategy[bytes]:
    vector, gguf = server.vector, server.gguf
    keys = sorted(json.loads(_safetensors_parts(vector)[0]["__metadata__"]["steering"]))
    return st.one_of(
        st.just(vector),
        st.just(gguf),
        st.integers(min_value=0, max_value=len(vector) - 1).map(lambda n: vector[:n]),
        st.integers(min_value=0, max_value=len(gguf) - 1).map(lambda n: gguf[:n]),
        st.builds(_with_metadata, st.just(vector), st.sampled_from(keys), ODD_JSON, st.booleans()),
        st.builds(
            _with_tensor_header,
            st.just(vector),
            st.sampled_from(["dtype", "shape", "data_offsets"]),
            st.one_of(ODD_JSON, st.lists(st.integers(min_value=-2, max_value=2**33), min_size=1, max_size=3)),
        ),
        st.binary(max_size=64).map(lambda tail: b"GGUF" + tail),
        st.tuples(st.integers(min_value=0, max_value=len(gguf) - 1), st.binary(min_size=1, max_size=8)).map(
            lambda cut: gguf[: cut[0]] + cut[1] + gguf[cut[0] + len(cut[1]) :]
        ),
    )


Edit = Callable[[Case], None]


def _positive(case: Case, location: ParameterLocation) -> bool:
    """Whether this part of the case was generated valid (hooks leave invalid parts as generated)."""
    meta = case.meta
    return meta is None or not meta.is_negative_at(location)


def _set_body(body: Any) -> Edit:
    def edit(case: Case) -> None:
        case.body = body

    return edit


def _set_task_id(task: str) -> Edit:
    def edit(case: Case) -> None:
        case.path_parameters = {**(case.path_parameters or {}), "task_id": task}

    return edit


def _registers_in_a_scenario(case: Case) -> bool:
    """A valid task registration in a stateful scenario (sent only cheapened: it is computed before going on)."""
    stateful = case.meta is not None and case.meta.phase.name == TestPhase.STATEFUL
    registers = case.operation.label == "POST /v1/tasks" and isinstance(case.body, dict)
    return stateful and registers and _positive(case, ParameterLocation.BODY)


def _edits(server: Server, case: Case) -> list[st.SearchStrategy[Edit]]:
    """Ways to aim this case at what exists on the server; the case is also sent as generated."""
    path, method = case.operation.path, case.operation.method.lower()
    # In a stateful scenario the links fill in ids and bodies; only what starts a scenario is aimed.
    stateful = case.meta is not None and case.meta.phase.name == TestPhase.STATEFUL
    edits: list[st.SearchStrategy[Edit]] = []
    body_ok = _positive(case, ParameterLocation.BODY)
    if body_ok and path == "/v1/tasks" and method == "post":
        edits.append(st.sampled_from(KNOWN_TASKS).map(_set_body))
        if not stateful:  # computing these would take the scenario's time; here they are deleted at once
            edits.append(TASKS_WITH_OPTIONS.map(_set_body))
            edits.append(st.sampled_from(KNOWN_TASKS).flatmap(_with_odd_strings).map(_set_body))
    if body_ok and path == IMPORT_PATH and server.vector:
        edits.append(_import_bodies(server).map(_set_body))
    if stateful:
        if _registers_in_a_scenario(case):
            # Each registered task is computed before the next step: keep to the methods that take a second.
            cheap = st.sampled_from(["task_vector", "contrastive", "icv"])
            edits.append(cheap.map(lambda m, body=case.body: {**body, "method": m, "options": {}}).map(_set_body))
        return edits
    if body_ok and path in GENERATION_PATHS and isinstance(case.body, dict):
        ids = st.sampled_from(server.task_ids())
        edits.append(st.builds(_aimed, st.just(case.body), ids, st.booleans()).map(_set_body))
        repaired = _repaired(case.body, path, server.task_ids())
        edits.extend([repaired.map(_set_body), repaired.map(_set_body)])  # twice: this is what reaches the engine
        edits.append(repaired.flatmap(_with_odd_strings).map(_set_body))
    # Reads only: a DELETE aimed at the known tasks would remove what the rest of the run aims at.
    if method == "get" and "task_id" in (case.path_parameters or {}) and _positive(case, ParameterLocation.PATH):
        edits.append(st.sampled_from(server.task_ids()).map(_set_task_id))
    return edits


def _has_lone_surrogates(value: Any) -> bool:
    if isinstance(value, bytes):
        return False
    return any(0xD800 <= ord(c) <= 0xDFFF for c in json.dumps(value, ensure_ascii=False, default=str))


def flatmap_case(context: HookContext, case: Case) -> st.SearchStrategy[Case]:
    """Aim a share of valid cases at what exists (known tasks, a real vector file), so they get past lookups."""
    server = _server_of(context)
    edits = _edits(server, case) if server is not None and server.ready_tasks else []
    if not edits:
        return st.just(case)

    def applied(edit: Edit | None) -> Case:
        if edit is not None:
            edit(case)
            if _has_lone_surrogates(case.body):
                # schemathesis re-validates an edited body with jsonschema_rs, which cannot read lone surrogates
                # (UnicodeEncodeError): take the edited case as generated. Only the mode label is lost, which
                # no enabled check reads.
                getattr(case, "_record_starting_state", lambda: None)()
        return case

    as_generated = [] if _registers_in_a_scenario(case) else [st.none()]
    return st.one_of(*as_generated, *edits).map(applied)


# ------------------------------------------------------------------------------------------ checks


def require(condition: object, message: str) -> None:
    """A check's assertion, with the message only (pytest's rewriting would add noise to the failure report)."""
    if not condition:
        raise AssertionError(message)


def error_shape(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """Every error answer is `{"error": {"type": str, "message": str, ...}}` (JSON, whatever the route)."""
    if response.status_code < 400 or (case.operation.path == "/readyz" and response.status_code == 503):
        return None
    content_type = response.headers.get("content-type", [""])[0]
    require(content_type.startswith(JSON), f"error {response.status_code} answered as {content_type!r}")
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(f"error {response.status_code} body is not JSON: {response.content[:200]!r}") from None
    error = body.get("error") if isinstance(body, dict) else None
    require(isinstance(error, dict), f"error {response.status_code} body has no `error` object: {body!r}")
    require(isinstance(error.get("type"), str) and error["type"], f"error.type is not a non-empty string: {body!r}")
    require(
        isinstance(error.get("message"), str) and error["message"], f"error.message not a non-empty string: {body!r}"
    )
    return True


def app_frames(trace: str) -> str:
    """The frames of a traceback in this project's code (app/, steering/), and the exception."""
    lines = trace.rstrip().splitlines()
    keep, last_frame = [], -1
    for i, line in enumerate(lines):
        if not line.lstrip().startswith("File "):
            continue
        last_frame = i
        if ("/app/" in line or "/steering/" in line) and "site-packages" not in line:
            keep.append(line.strip())
            if i + 1 < len(lines) and not lines[i + 1].lstrip().startswith("File "):
                keep.append("    " + lines[i + 1].strip())
    # The exception: what follows the last frame's source line and its ^^^ markers (a few lines at most).
    rest = [ln for ln in lines[last_frame + 2 :] if ln.strip() and set(ln.strip()) - set("^~")]
    return "\n".join([*keep, *[ln.strip() for ln in rest[:4]]])


def no_server_exception(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """Nothing escaped the app while answering (the failure shows where, in the app's code)."""
    server = case.operation.app
    if isinstance(server, Server) and server.errors:
        raise AssertionError("the app raised while answering:\n" + "\n".join(map(app_frames, server.errors)))
    return True


def no_foreign_access(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """With keys, another key's task is never served: not read, listed, exported, deleted or steered with."""
    server = case.operation.app
    foreign = server.foreign_task if isinstance(server, Server) else ""
    if not foreign or not 200 <= response.status_code < 300:
        return None
    sent = json.dumps([case.path_parameters, case.query, case.body], default=str)
    require(foreign not in sent, f"{case.operation.label} answered {response.status_code} for another key's task")
    require(foreign.encode() not in response.content, f"{case.operation.label} shows another key's task")
    return True


def needs_key(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """On a server with keys, a /v1 request without one never gets past the key check."""
    if case.operation.path in UNAUTHENTICATED_PATHS:
        return None
    require(
        response.status_code < 200 or response.status_code >= 300,
        f"{case.operation.label} answered {response.status_code} without an API key",
    )
    return True


def _sse_events(content: bytes) -> list[dict[str, str]]:
    events = []
    for block in content.decode("utf-8", "replace").replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            name, _, value = line.partition(":")
            if name in ("event", "data"):
                value = value[1:] if value.startswith(" ") else value
                fields[name] = f"{fields[name]}\n{value}" if name in fields else value
        if "data" in fields:
            events.append(fields)
    return events


def stream_ends_well(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """A stream ends with its last event (`done`, or OpenAI's `[DONE]`), or with an error event that is no bug."""
    content_type = response.headers.get("content-type", [""])[0]
    if response.status_code != 200 or not content_type.startswith(SSE) or response.stream_cut_short:
        return None
    events = _sse_events(response.content)
    require(events, f"an empty event stream: {response.content[:200]!r}")
    for event in events[:-1]:
        try:
            parsed = json.loads(event["data"])
        except ValueError:
            parsed = None
        require(isinstance(parsed, dict), f"an event whose data is not a JSON object: {event}")
    last = events[-1]
    try:
        data = json.loads(last["data"])
    except ValueError:
        data = last["data"]
    if isinstance(data, dict) and "error" in data:
        error = data["error"]
        require(
            isinstance(error, dict) and isinstance(error.get("type"), str) and isinstance(error.get("message"), str),
            f"the stream's error event is not the error shape: {last}",
        )
        require(error["type"] != "internal_error", f"the stream failed inside the server: {last}")
        return True
    if case.operation.path == "/v1/generate":
        require(last.get("event") == "done" and isinstance(data, dict) and "text" in data, f"stream ends with {last}")
    else:
        require(data == "[DONE]", f"the stream ends with {last}, not [DONE]")
    return True


WITNESS = {"prompt": "Q: hot\nA:", "max_new_tokens": 2}  # a plain request sent alongside each generation


def _witness(client: Any) -> str:
    """Send the witness request; what went wrong with it ('' when it was answered 200)."""
    response = client.post("/v1/generate", json=WITNESS, timeout=REQUEST_TIMEOUT_S)
    return "" if response.status_code == 200 else f"{response.status_code} {response.text[:300]}"


def witness_unharmed(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """A plain generation sent at the same time (so batched with this one) is answered normally."""
    server = case.operation.app
    if not isinstance(server, Server) or server.witness is None:
        return None
    require(not server.witness, f"a plain request sent at the same time failed: {server.witness}")
    return True


FUZZ_CHECKS = [error_shape, no_server_exception, stream_ends_well, no_foreign_access, witness_unharmed]


def _may_reach_the_engine(case: Case) -> bool:
    """A generation request that validation may let through (others get no witness: it would only cost time)."""
    body = case.body
    if case.operation.path not in GENERATION_PATHS or not isinstance(body, dict):
        return False
    if case.operation.path == "/v1/generate":
        given = [body.get(k) is not None for k in ("prompt", "input", "messages")]
        limit = body.get("max_new_tokens", 32)
        return sum(given) == 1 and isinstance(limit, int) and 1 <= limit <= MAX_NEW_TOKENS
    limit = body.get("max_completion_tokens") or body.get("max_tokens") or 1
    return isinstance(limit, int) and 1 <= limit <= MAX_NEW_TOKENS


def run_case(case: Case, server: Server, checks: list[Any]) -> None:
    server.errors.clear()
    server.witness = None
    started = time.perf_counter()
    try:
        if _may_reach_the_engine(case):
            # Sent together, the two requests share the batcher's window: one request's failure must not
            # become the other's (the witness is plain, so any failure of it is this case's doing).
            # The client is entered here, not in the thread: entering starts the app's lifespan if needed, and
            # schemathesis lets a second caller through before a lifespan it is starting is up.
            with schemathesis_asgi.get_client(server) as client, ThreadPoolExecutor(max_workers=1) as pool:
                client.headers.update(server.headers)
                witness = pool.submit(_witness, client)
                response = case.call(timeout=REQUEST_TIMEOUT_S)
                server.witness = witness.result()
        else:
            response = case.call(timeout=REQUEST_TIMEOUT_S)
    except Exception as exc:  # a hang (timeout), or an exception before any answer
        if not REPORT:
            raise
        where = "".join(traceback.format_exception(exc)[-4:-1]).strip()
        record_finding(case, None, [f"no answer: {type(exc).__name__}: {exc}\n{where}"], server)
        return
    STATS.append((server.name, case.operation.label, response.status_code, time.perf_counter() - started))
    try:
        validate(case, response, checks, server)
    finally:
        if case.operation.label == "POST /v1/tasks" and response.status_code == 202:
            forget_new_tasks(server)


def validate(case: Case, response: Response, checks: list[Any], server: Server, **kwargs: Any) -> None:
    """Run the checks; in report mode record what fails and go on (a failure otherwise ends the operation's test)."""
    try:
        case.validate_response(response, additional_checks=checks, **kwargs)
    except FailureGroup as exc:
        if not REPORT:
            raise
        record_finding(case, response, [f"{f.title}: {f.message}" for f in exc.exceptions], server)


FINDINGS: dict[tuple[str, ...], str] = {}


def _culprit(frames: str) -> str:
    """Where a failure comes from, for telling failures apart: the innermost frame of ours, the exception type."""
    lines = frames.splitlines()
    frame = next((ln for ln in reversed(lines) if ln.startswith("File ")), "")
    exception = next((ln for ln in lines if ln and not ln.startswith(("File ", " "))), "")
    return f"{frame} {exception.split(':', 1)[0]}"


def record_finding(case: Case, response: Response | None, failures: list[str], server: Server) -> None:
    culprit = _culprit(app_frames(server.errors[-1])) if server.errors else ""
    titles = tuple(sorted(f.split(":", 1)[0] for f in failures))
    key = (case.operation.label, *titles, culprit)
    if key in FINDINGS:
        return
    answer = "" if response is None else f"{response.status_code} {response.content[:300]!r}"
    shown = any("the app raised" in f for f in failures)
    trace = "" if shown else "\n".join(map(app_frames, server.errors))
    FINDINGS[key] = (
        f"[{server.name}] {_request_line(case, full=True)}\n  -> {answer}\n  "
        + "\n  ".join(failures)
        + (f"\n  server traceback:\n    {trace.replace(chr(10), chr(10) + '    ')}" if trace else "")
    )


def restore_known_tasks(server: Server) -> None:
    """Register again (and wait for) a known task that a scenario deleted through a link."""
    with schemathesis_asgi.get_client(server) as client:
        client.headers.update(server.headers)
        for task, body in zip(server.ready_tasks, KNOWN_TASKS, strict=True):
            if client.get(f"/v1/tasks/{task}").status_code == 404:
                assert client.post("/v1/tasks", json=body).json()["id"] == task
            _wait_for(client, task, "ready")


def settle(client: Any, task: str, timeout_s: float = 120.0) -> str:
    """Wait until the task is ready or failed; its status then."""
    deadline = time.monotonic() + timeout_s
    while (status := client.get(f"/v1/tasks/{task}").json()["status"]) not in ("ready", "failed"):
        assert time.monotonic() < deadline, f"task {task} still {status} after {timeout_s} s"
        time.sleep(0.05)
    return status


def _wait_for(client: Any, task: str, wanted: str) -> None:
    status = settle(client, task)
    assert status == wanted, (task, status)


@contextmanager
def forgetting(server: Server) -> Iterator[None]:
    try:
        yield
    finally:
        forget_new_tasks(server)


def forget_new_tasks(server: Server) -> None:
    """Delete the tasks fuzzing registered (their computations would pile up and starve the next requests)."""
    keep = set(server.task_ids())
    with schemathesis_asgi.get_client(server) as client:
        client.headers.update(server.headers)
        listed = client.get("/v1/tasks", params={"limit": 200})
        assert listed.status_code == 200, listed.text
        for task in listed.json()["tasks"]:
            if task["id"] not in keep:
                client.delete(f"/v1/tasks/{task['id']}")


STATS: list[tuple[str, str, int, float]] = []


def _request_line(case: Case, full: bool = False) -> str:
    """The request in one line: method, path with its parameters, query, body (bytes shortened unless `full`)."""
    path = case.operation.path.format(**(case.path_parameters or {}))
    query = f"?{case.query}" if case.query else ""
    body = case.body
    if isinstance(body, bytes):
        body = f"<{len(body)} bytes, base64 {base64.b64encode(body).decode()}>" if full else f"<{len(body)} bytes>"
    shown = "" if body is None or type(body).__name__ == "NotSet" else f" {json.dumps(body, default=str)}"
    shown = shown if full else shown[:300]
    return f"{case.method.upper()} {path}{query}{shown}"


# ------------------------------------------------------------------------------------------ setup


def _prepare(server: Server) -> None:
    """Start the lifespan, then compute a task (and fail one) to aim at; export its vector both ways."""
    with schemathesis_asgi.get_client(server) as client:
        client.headers.update(server.headers)
        assert client.get("/readyz").status_code == 200
        posted = [client.post("/v1/tasks", json=body) for body in (*KNOWN_TASKS, FAILING_TASK)]
        assert all(r.status_code in (200, 202) for r in posted), [r.text for r in posted]
        *server.ready_tasks, server.failed_task = [r.json()["id"] for r in posted]
        for task in server.ready_tasks:
            _wait_for(client, task, "ready")
        _wait_for(client, server.failed_task, "failed")
        if server.headers:
            other = client.post("/v1/tasks", json=KNOWN_TASKS[0], headers={"Authorization": f"Bearer {OTHER_KEY}"})
            assert other.status_code in (200, 202), other.text
            server.foreign_task = other.json()["id"]
        exported = client.get(f"/v1/tasks/{server.ready_tasks[0]}/vector")
        gguf = client.get(f"/v1/tasks/{server.ready_tasks[1]}/vector", params={"format": "gguf"})
        assert exported.status_code == 200 and gguf.status_code == 200, (exported.text, gguf.text)
        server.vector, server.gguf = exported.content, gguf.content


@pytest.fixture(scope="module", autouse=True)
def fuzz_servers() -> Iterator[None]:
    try:
        for server in (OPEN, KEYED):
            _prepare(server)
        yield
    finally:
        schemathesis_asgi.shutdown_lifespans()
        shutil.rmtree(DATA, ignore_errors=True)
        _print_stats()
    if FINDINGS:
        report = "\n\n".join(FINDINGS.values())
        print(f"\n{len(FINDINGS)} distinct failures:\n\n{report}")
        pytest.fail(f"fuzzing found {len(FINDINGS)} distinct failures (printed above)", pytrace=False)


def _print_stats() -> None:
    if not os.environ.get("STEER_FUZZ_STATS"):
        return
    table: dict[tuple[str, str], dict[int, int]] = {}
    for name, label, status, _ in STATS:
        table.setdefault((name, label), {}).setdefault(status, 0)
        table[(name, label)][status] += 1
    for (name, label), counts in sorted(table.items()):
        print(f"{name:6} {label:40} {dict(sorted(counts.items()))}")
    print("total requests", len(STATS), "seconds in requests", round(sum(s[3] for s in STATS), 1))


# ------------------------------------------------------------------------------------------ tests

open_schema = contract_schema(OPEN, fuzz_config(headers={}, examples=FUZZ_EXAMPLES, coverage=True))
keyed_schema = contract_schema(
    KEYED, fuzz_config(headers=KEYED.headers, examples=max(5, FUZZ_EXAMPLES // 2), coverage=False)
)
anonymous_schema = contract_schema(KEYED, fuzz_config(headers={}, examples=3, coverage=False))


@open_schema.parametrize()
def test_open_server(case: Case) -> None:
    """Each operation on a server without keys: positive and negative cases, boundary values, random ones."""
    run_case(case, OPEN, FUZZ_CHECKS)


@keyed_schema.parametrize()
def test_server_with_keys(case: Case) -> None:
    """Each operation on a server with keys, sending a valid key (so bodies get past the key check)."""
    run_case(case, KEYED, FUZZ_CHECKS)


@anonymous_schema.parametrize()
def test_server_with_keys_without_a_key(case: Case) -> None:
    """Each operation on a server with keys, sending none: /v1 never answers 2xx."""
    run_case(case, KEYED, [*FUZZ_CHECKS, needs_key])


def test_stateful_task_lifecycle() -> None:
    """Register or import a task, then follow the contract's links: read, export, generate, delete."""
    machine = open_schema.as_state_machine()
    trail: list[str] = []  # the requests of the current scenario (the failing one, when it fails)

    class Lifecycle(machine):  # type: ignore[misc, valid-type]
        def setup(self) -> None:
            trail.clear()

        def before_call(self, case: Case) -> None:
            OPEN.errors.clear()

        def after_call(self, response: Response, case: Case) -> None:
            super().after_call(response, case)
            if case.operation.label == "POST /v1/tasks" and response.status_code == 202:
                # Let the computation finish before the next step, so that posting the same task again
                # answers the same whatever the timing (Hypothesis checks that replays generate the same).
                with schemathesis_asgi.get_client(OPEN) as client:
                    settle(client, json.loads(response.content)["id"])

        def teardown(self) -> None:
            # Every scenario starts from the same store: Hypothesis replays choices and needs the same answers.
            forget_new_tasks(OPEN)
            restore_known_tasks(OPEN)

        def validate_response(self, response: Response, case: Case, additional_checks=None, **kwargs: Any) -> None:
            STATS.append(("state", case.operation.label, response.status_code, response.elapsed))
            trail.append(f"{_request_line(case)} -> {response.status_code} {response.content[:120]!r}")
            kwargs = {"transport_kwargs": kwargs or None, "recorder": self.recorder}
            validate(case, response, FUZZ_CHECKS, OPEN, **kwargs)

    try:
        Lifecycle.run(
            settings=hypothesis.settings(
                max_examples=FUZZ_SCENARIOS,
                stateful_step_count=FUZZ_STEPS,
                derandomize=True,
                database=None,
                deadline=None,
                suppress_health_check=list(hypothesis.HealthCheck),
                phases=[p for p in hypothesis.Phase if SHRINK or p is not hypothesis.Phase.shrink],
            )
        )
    except BaseException:
        print("the failing scenario's requests, in order:\n  " + "\n  ".join(trail))  # shown with the failure
        raise


# ------------------------------------------------------------------------------------------ non-finite numbers

NON_FINITE = ("NaN", "Infinity", "-Infinity", "1e999")  # JSON tokens Python's parser reads as floats
# A body each JSON operation accepts; every number in its schema is set, in turn, to each token above.
BASE_BODIES: dict[str, dict[str, Any]] = {
    "/v1/tasks": {"demonstrations": [{"input": "a", "output": "b"}], "method": "task_vector"},
    "/v1/generate": {"prompt": "hi", "max_new_tokens": 2},
    "/v1/completions": {"prompt": "hi", "max_tokens": 2},
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
}


def _numeric_leaves(raw: dict[str, Any], schema: dict[str, Any], depth: int = 0) -> list[list[str | int]]:
    """Paths to every number or integer a request schema allows (through $ref, anyOf and arrays' first item)."""
    if depth > 6:
        return []
    ref = schema.get("$ref")
    if isinstance(ref, str):
        schema = raw["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    if schema.get("type") in ("number", "integer"):
        return [[]]
    found: list[list[str | int]] = []
    for option in schema.get("anyOf", []) + schema.get("oneOf", []):
        found += _numeric_leaves(raw, option, depth + 1)
    for name, sub in schema.get("properties", {}).items():
        found += [[name, *leaf] for leaf in _numeric_leaves(raw, sub, depth + 1)]
    if isinstance(schema.get("items"), dict):
        found += [[0, *leaf] for leaf in _numeric_leaves(raw, schema["items"], depth + 1)]
    return [list(p) for p in dict.fromkeys(tuple(p) for p in found)]


def _with_marker(body: Any, path: list[str | int], task: str) -> Any:
    """`body` with `__MARK__` at `path`, building the containers on the way (a steering entry names `task`)."""
    if not path:
        return "__MARK__"
    head, rest = path[0], path[1:]
    if isinstance(head, int):
        items = list(body) if isinstance(body, list) and body else [{}]
        items[0] = _with_marker(items[0], rest, task)
        return items
    body = dict(body) if isinstance(body, dict) else {}
    default: Any = {"task": task} if head == "steering" else None
    inner = body.get(head, [default] if head == "steering" else None)
    body[head] = _with_marker(inner, rest, task)
    return body


def _option_leaves() -> list[tuple[dict[str, Any], list[str | int]]]:
    leaves = []
    for method, names in OPTION_NUMBERS.items():
        base = {**BASE_BODIES["/v1/tasks"], "method": method}
        leaves += [(base, ["options", *(name if isinstance(name, list) else [name])]) for name in names]
    return leaves


def test_non_finite_numbers() -> None:
    """NaN, ±Infinity and 1e999 (which Python's JSON parser reads as floats) in every number: a 4xx, never a 5xx.

    The fuzzing cannot send them (its client writes strict JSON), so this sweeps them in by hand.
    """
    raw = OPEN.app.openapi()
    sent = 0
    with schemathesis_asgi.get_client(OPEN) as client, forgetting(OPEN):
        cases = [
            (path, base, leaf)
            for path, base in BASE_BODIES.items()
            for leaf in _numeric_leaves(raw, raw["paths"][path]["post"]["requestBody"]["content"][JSON]["schema"])
        ]
        cases += [("/v1/tasks", base, leaf) for base, leaf in _option_leaves()]
        for path, base, leaf in cases:
            template = json.dumps(_with_marker(base, leaf, OPEN.ready_tasks[0]))
            for token in NON_FINITE:
                OPEN.errors.clear()
                body = template.replace('"__MARK__"', token)
                response = client.post(path, data=body, headers={"content-type": JSON})
                sent += 1
                where = f"POST {path} {body}"
                assert not OPEN.errors, f"{where}: the app raised\n" + "\n".join(map(app_frames, OPEN.errors))
                assert 400 <= response.status_code < 500, f"{where}: {response.status_code} {response.text}"
                assert response.json()["error"]["type"], f"{where}: {response.text}"
    assert sent >= 40, f"only {sent} requests: the request schemas lost their numbers?"


# ------------------------------------------------------------------------------------------ options up front

# Options the computation would refuse (or silently drop) later: registration refuses them with a 422,
# as it does for the top-level options (`TaskService._check_limits`), instead of a task that fails.
REFUSED_OPTIONS: list[tuple[str, str]] = [
    ("auto", '{"time_budget_s": Infinity}'),  # stored as null: the computation then fails validating it
    ("auto", '{"candidates": ["task_vector"], "method_options": {"task_vector": {"k_shot": "x"}}}'),
    ("auto", '{"candidates": ["task_vector"], "method_options": {"task_vector": {"bogus": 1}}}'),
    ("auto", '{"candidates": ["task_vector"], "method_options": {"task_vector": {"layer": 99}}}'),
    ("task_vector", '{"layer": 99}'),
    ("task_vector", '{"bogus": 1}'),
]


def test_options_are_refused_up_front() -> None:
    demonstrations = json.dumps(task_body(ANTONYMS)["demonstrations"])
    wrong = []
    with schemathesis_asgi.get_client(OPEN) as client, forgetting(OPEN):
        for method, options in REFUSED_OPTIONS:
            body = f'{{"demonstrations": {demonstrations}, "method": "{method}", "options": {options}}}'
            response = client.post("/v1/tasks", data=body, headers={"content-type": JSON})
            if response.status_code != 422:
                wrong.append(f"method {method}, options {options}: {response.status_code} {response.text}")
    assert not wrong, "accepted options the computation refuses:\n" + "\n".join(wrong)
