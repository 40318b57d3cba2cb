"""Every error the service raises by name, defined once: its status, type, message and headers.

`raise ApiErrors.PROMPT_TOO_LONG(tokens=n, limit=m)` formats the message template with the fields given;
`app/errors.py` answers it in the one JSON error shape, and maps the library's generation errors to their
entries here (`GENERATION_ERRORS`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

BEARER = {"WWW-Authenticate": "Bearer"}


def retry_after(seconds: int) -> dict[str, str]:
    return {"Retry-After": str(seconds)}


class ApiError(Exception):
    """An error answered as the JSON error shape; raised through the table below, never written inline."""

    def __init__(
        self, status: int, type_: str, message: str, /, *, headers: dict[str, str] | None = None, **detail: Any
    ) -> None:
        super().__init__(message)
        self.status, self.type, self.message, self.headers, self.detail = status, type_, message, headers, detail


# eq=False: entries compare by identity, so no two Enum members alias however alike, and the dict fields need no hash.
@dataclass(frozen=True, eq=False)
class ErrorSpec:
    status: int
    type: str
    message: str  # a `str.format` template over the fields the error is raised with
    headers: Mapping[str, str] = field(default_factory=dict)
    echo: tuple[str, ...] = ()  # fields also given in the body, beside `type` and `message`
    extra: Mapping[str, str] = field(default_factory=dict)  # constant fields of the body

    def error(self, **fields: Any) -> ApiError:
        detail = {**self.extra, **{name: fields[name] for name in self.echo}}
        message = self.message.format(**fields)
        return ApiError(self.status, self.type, message, headers=dict(self.headers) or None, **detail)


class ApiErrors(Enum):
    """The table. Several entries may share a type: each is one message a client can get."""

    # keys (app/auth.py)
    NO_API_KEY = ErrorSpec(401, "unauthorized", "this server needs an API key: Authorization: Bearer <key>", BEARER)
    INVALID_API_KEY = ErrorSpec(401, "unauthorized", "invalid API key", BEARER)

    # bodies (app/middleware.py; inside FastAPI's body parsing they travel as HTTPExceptions of the same status)
    BODY_TOO_SLOW = ErrorSpec(
        408,
        "request_timeout",
        "the request body came too slowly: {received} bytes in {elapsed_s:.0f} s (allowed: {timeout_s:g} s, plus 1 s "
        "per {min_rate} bytes)",
    )
    BODY_TOO_LARGE = ErrorSpec(413, "body_too_large", "the request body is over {limit} bytes")
    UNSUPPORTED_BODY = ErrorSpec(400, "invalid_request", "{reason}")

    # request bounds (app/bounds.py, app/generation.py)
    STRENGTH_OUT_OF_RANGE = ErrorSpec(422, "strength_out_of_range", "{where} must be a finite number within ±{limit}")
    TASK_STRENGTH_OUT_OF_RANGE = ErrorSpec(
        422,
        "strength_out_of_range",
        "{where} all steer with task {task}: their strengths add up to {total:g} (the sum of |strength|), and one "
        "task's entries may add up to at most {limit:g}",
    )
    NO_LAYERS = ErrorSpec(422, "invalid_layers", "{where}, when given, must name at least one layer")
    LAYER_OUT_OF_RANGE = ErrorSpec(422, "invalid_layers", "{where}: layer {layer} is out of range 0..{last}")
    MAX_NEW_TOKENS_TOO_LARGE = ErrorSpec(422, "max_new_tokens_too_large", "max_new_tokens is limited to {limit}")
    TOO_MANY_STEERING_ENTRIES = ErrorSpec(
        422, "too_many_steering_entries", "at most {limit} steering entries per request"
    )
    TWO_KV_PREFIXES = ErrorSpec(
        422,
        "two_kv_prefixes",
        "steering entries {entries} name tasks whose vectors are KV prefixes (context_tuning: {tasks}), which "
        "compose side by side ahead of the prompt, but not here: {reason}. Steer with one of them, or register "
        'the others\' demonstrations again with an activation method ("method": "soft_injection", say)',
    )
    NO_CHAT_TEMPLATE = ErrorSpec(422, "no_chat_template", "this model has no chat template: send `prompt` instead")
    EMPTY_PROMPT = ErrorSpec(422, "empty_prompt", "the prompt is empty")
    PROMPT_TOO_LONG = ErrorSpec(422, "prompt_too_long", "the prompt has {tokens} tokens; the limit is {limit}")
    CONTEXT_LENGTH_EXCEEDED = ErrorSpec(
        422,
        "context_length_exceeded",
        "the prompt's {tokens} tokens (with any task's KV prefix) plus max_new_tokens {new_tokens} exceed the "
        "model's context of {window} tokens",
    )
    CLIENT_CLOSED_REQUEST = ErrorSpec(
        499, "client_closed_request", "the client closed the connection before the answer"
    )
    MODEL_NOT_FOUND = ErrorSpec(
        404,
        "model_not_found",
        "model: {requested} is not served here; this server serves {served!r} (GET /v1/models)",
        extra={"param": "model", "code": "model_not_found"},
    )

    # registering tasks (app/tasks.py)
    TOO_MANY_DEMONSTRATIONS = ErrorSpec(422, "too_many_demonstrations", "at most {limit} demonstrations per task")
    DEMONSTRATION_TOO_LONG = ErrorSpec(
        422,
        "demonstration_too_long",
        "a demonstration's input or output has {chars} characters; the limit is {limit}",
    )
    DEMONSTRATIONS_EXCEED_CONTEXT = ErrorSpec(
        422,
        "demonstrations_exceed_context",
        "the task's longest {shots}-shot prompt takes {tokens} tokens with its answer, and the model reads at most "
        "{window}: use shorter demonstrations (its few-shot baseline always takes up to 10), or a smaller k_shot",
    )
    UNKNOWN_METHOD = ErrorSpec(422, "unknown_method", "method {method} is not available on this server")
    INVALID_OPTIONS = ErrorSpec(422, "invalid_options", "{reason}")
    NO_CHAT_TEMPLATE_FOR_TASK = ErrorSpec(
        422, "no_chat_template", '{reason}: register with a template other than "chat"'
    )
    TASK_QUOTA_EXCEEDED = ErrorSpec(
        429, "task_quota_exceeded", "this key already has {limit} tasks: delete some first", retry_after(60)
    )
    COMPUTATION_QUOTA_EXCEEDED = ErrorSpec(
        429,
        "computation_quota_exceeded",
        "this key already has {computing} tasks computing; the limit is {limit}: retry when one is ready",
        retry_after(10),
    )
    NAME_TAKEN = ErrorSpec(
        409,
        "name_taken",
        "name: {name} is the name of task {task!r} of this key: rename or delete that task, or "
        'send "take_name": true to move the name to this one',
        echo=("task",),
    )
    CONFLICT = ErrorSpec(409, "conflict", "task {task_id!r} is being deleted and created concurrently; retry")

    # reading tasks and their vectors (app/tasks.py, app/vector_files.py)
    TASK_NOT_FOUND = ErrorSpec(404, "not_found", "task {task} not found")
    TASK_NOT_READY = ErrorSpec(409, "task_not_ready", "task {task_id!r} is {status}", echo=("status",))
    NO_VECTOR_STORED = ErrorSpec(409, "task_not_ready", "task {task_id!r} has no vector stored yet")
    VECTOR_RECOMPUTING = ErrorSpec(409, "task_not_ready", "task {task_id!r}: {problem}; it is being recomputed")
    VECTOR_TO_IMPORT_AGAIN = ErrorSpec(409, "task_not_ready", "task {task_id!r}: {problem}; import it again")
    STORED_VECTOR_UNREADABLE = ErrorSpec(
        409, "task_not_ready", "the stored vector is unreadable ({reason}); import it again"
    )
    TASK_MODEL_MISMATCH = ErrorSpec(
        409, "model_mismatch", "task {task_id!r} was computed on model {task_model}, this server runs {served}"
    )
    NOT_EXPORTABLE = ErrorSpec(422, "not_exportable", "{reason}")

    # importing vectors (app/vector_files.py, app/import_slots.py)
    EMPTY_VECTOR_BODY = ErrorSpec(
        422, "invalid_vector", "the request body is empty: send the vector file as the raw body"
    )
    NOT_A_SAFETENSORS_VECTOR = ErrorSpec(
        422, "invalid_vector", "the body is not a steering vector in safetensors: {reason}"
    )
    INVALID_VECTOR = ErrorSpec(422, "invalid_vector", "{reason}")
    VECTOR_MODEL_MISMATCH = ErrorSpec(
        409, "model_mismatch", "the vector was computed on model {vector_model}, this server runs {served}"
    )
    CONTROL_VECTOR_FAMILY_MISMATCH = ErrorSpec(
        409,
        "model_mismatch",
        "the control vector is for model family {family}; this server runs {model!r} (family {served_family!r})",
    )
    MODEL_MISMATCH = ErrorSpec(409, "model_mismatch", "{reason}")
    TOO_MANY_IMPORTS = ErrorSpec(
        429, "too_many_imports", "{limit} vector imports are being read already; retry shortly", retry_after(1)
    )
    IMPORT_TIMEOUT = ErrorSpec(
        503,
        "import_timeout",
        "reading the vector took over {timeout_s:.0f} s; retry when the server is less busy",
        retry_after(5),
    )

    # the generation backend's errors, by kind (app/errors.py GENERATION_ERRORS): the message is the exception's
    OVERLOADED = ErrorSpec(503, "overloaded", "{reason}")
    SHUTTING_DOWN = ErrorSpec(503, "shutting_down", "{reason}")
    NOT_SERVING = ErrorSpec(503, "not_serving", "{reason}")
    GENERATION_FAILED = ErrorSpec(422, "generation_failed", "{reason}")
    INVALID_STEERING = ErrorSpec(422, "invalid_steering", "{reason}")
    GENERATION_UNAVAILABLE = ErrorSpec(503, "generation_unavailable", "{reason}")

    # the store (answered by the handlers of app/errors.py)
    STORE_FULL = ErrorSpec(
        503,
        "store_full",
        "the task store is full and refuses writes; reads still work. Retry later or delete tasks",
        retry_after(30),
    )
    STORE_UNAVAILABLE = ErrorSpec(
        503, "store_unavailable", "the task store is unreachable; retry shortly", retry_after(2)
    )

    def __call__(self, **fields: Any) -> ApiError:
        return self.value.error(**fields)
