"""The HTTP API's wire format, shared by the server (`app/`) and the Python client.

These pydantic models are the contract of the service: the server validates requests with
them and the client builds and parses them, so both sides always agree.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_serializer, model_validator
from pydantic_core import PydanticCustomError
from typing_extensions import NotRequired, TypedDict

from steering.wire.method_names import Method

TaskStatus = Literal["pending", "running", "ready", "failed"]

# Bounds every server shares, defined once and checked when a request is parsed. Bounds that depend on
# the server (its model's layer count, `max_strength`, token limits) are checked in `app/bounds.py`.
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # what torch.Generator.manual_seed accepts
MIN_TEMPERATURE = 1e-3  # below it, logits / temperature overflow; 0 means greedy
MAX_STOP_STRINGS, MAX_STOP_CHARS = 8, 256
MAX_LAYERS_PER_ENTRY = 1024
# A template's parts are rendered into every prompt of its task: about the default prompt limit (2048 tokens)
# each. The separator is a stop string of the task's answers (`templates.stop_strings`), so it is bounded as one.
MAX_TEMPLATE_CHARS = 8192


def _temperature_floor(value: float) -> float:
    if 0.0 < value < MIN_TEMPERATURE:
        raise ValueError(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}")
    return value


def _unique(values: list[int]) -> list[int]:
    """Each layer once, in the order given: a repeated layer would add its vector again."""
    return list(dict.fromkeys(values))


Seed = Annotated[int, Field(ge=SEED_MIN, le=SEED_MAX, description="Makes sampling reproducible.")]
Temperature = Annotated[float, Field(ge=0.0), AfterValidator(_temperature_floor)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]


def _stop_strings(value: str | list[str]) -> str | list[str]:
    strings = [value] if isinstance(value, str) else value
    if len(strings) > MAX_STOP_STRINGS or not all(0 < len(s) <= MAX_STOP_CHARS for s in strings):
        raise PydanticCustomError(
            "invalid_stop",
            f"give at most {MAX_STOP_STRINGS} non-empty stop strings of at most {MAX_STOP_CHARS} characters",
        )
    return value


Stop = Annotated[str | list[str], AfterValidator(_stop_strings)]
# A field (of the OpenAI API) this server cannot honour, given a value other than its neutral one.
UNSUPPORTED_PARAMETER = "unsupported_parameter"
# Validation errors of these types keep their type in the error body (others are "invalid_request").
NAMED_ERRORS = frozenset({"invalid_stop", "invalid_text", "invalid_name", UNSUPPORTED_PARAMETER})
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
Layers = Annotated[list[int], AfterValidator(_unique)]  # within the model's range: app/bounds.py


TASK_ID_PREFIX = "task-"  # every task id starts so (`task-` and 24 hex digits); no name may
MAX_NAME_CHARS = 100
_NOT_IN_NAMES = "/:\\"  # paths (`/v1/tasks/{name}`), `--task NAME:STRENGTH`


def _task_name(value: str) -> str:
    """A name a task is called by within its key: 1 to MAX_NAME_CHARS printable characters, no `/`, `:` or
    `\\`, no space at either end, and never an id's `task-` prefix (so a name and an id are never confused)."""
    if not 0 < len(value) <= MAX_NAME_CHARS:
        problem = f"a name has 1 to {MAX_NAME_CHARS} characters"
    elif value != value.strip() or not value.isprintable():
        problem = "a name is printable text without spaces at either end"
    elif any(c in value for c in _NOT_IN_NAMES):
        problem = "a name cannot contain '/', ':' or '\\'"
    elif value.lower().startswith(TASK_ID_PREFIX):
        problem = f"a name cannot start with {TASK_ID_PREFIX!r}, as task ids do"
    else:
        return value
    raise PydanticCustomError("invalid_name", problem)


TaskName = Annotated[
    str,
    AfterValidator(_task_name),
    Field(
        description=f"What the task is called within its key (unique per key): 1 to {MAX_NAME_CHARS} printable "
        "characters without '/', ':' or '\\', not starting with 'task-'. Requests may name the task by it.",
        examples=["antonyms"],
    ),
]


def valid_text(data: Any) -> Any:
    """Refuse lone surrogates anywhere in a request: JSON's "\\ud800" escapes decode to strings that no
    tokenizer takes and no store can encode as UTF-8."""
    pending = [data]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if _LONE_SURROGATE.search(item):
                raise PydanticCustomError("invalid_text", "text must be valid Unicode, without lone surrogates")
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, (list, tuple)):
            pending.extend(item)
    return data


class WireModel(BaseModel):
    """Requests: unknown fields refused, NaN and infinity refused wherever a number is expected, text
    that is valid Unicode."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _valid_text(cls, data: Any) -> Any:
        return valid_text(data)


class Demonstration(WireModel):
    input: str = Field(..., description="The demonstration's input, e.g. 'hot'.")
    output: str = Field(..., description="What the task maps the input to, e.g. 'cold'.")


class TemplateFields(TypedDict):
    example: str
    query: str
    separator: str
    prefix: NotRequired[str]


class Template(BaseModel):
    """How demonstrations and queries are written out for the model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    example: str = Field("Q: {input}\nA: {output}", max_length=MAX_TEMPLATE_CHARS, description="One demonstration.")
    query: str = Field("Q: {input}\nA:", max_length=MAX_TEMPLATE_CHARS, description="A zero-shot query.")
    separator: str = Field(
        "\n\n", max_length=MAX_STOP_CHARS, description="Between demonstrations in a few-shot prompt."
    )
    prefix: str = Field(
        "",
        max_length=MAX_TEMPLATE_CHARS,
        description="Once, before every prompt (a chat template's system turn); usually empty.",
    )

    @model_serializer(mode="wrap")
    def _without_empty_prefix(self, handler: Any) -> TemplateFields:
        """No prefix, no key: templates (and task ids hashed from them) read as before the field existed."""
        data = handler(self)
        if isinstance(data, dict) and not self.prefix:
            data.pop("prefix", None)
        return data

    @model_validator(mode="after")
    def _placeholders(self) -> Template:
        if "{input}" not in self.example or "{output}" not in self.example:
            raise ValueError("template.example must contain {input} and {output}")
        if "{input}" not in self.query:
            raise ValueError("template.query must contain {input}")
        return self


class TaskCreate(WireModel):
    demonstrations: list[Demonstration] = Field(..., min_length=1)
    method: Method = "auto"
    name: TaskName | None = None
    take_name: bool = Field(
        False,
        description="When another task of this key has `name`, move the name here (that task stays, unnamed) "
        "instead of answering 409 `name_taken`.",
    )
    template: Template | Literal["chat"] | None = Field(
        None,
        description=(
            'How demonstrations and queries are written; "chat": in the model\'s chat template, each input a user '
            "message and each output the assistant's answer (for tasks used through chat requests)."
        ),
    )
    options: dict[str, Any] = Field(default_factory=dict)


class TaskCreated(BaseModel):
    id: str
    status: TaskStatus
    name: str | None = Field(None, exclude_if=lambda name: name is None, description="Left out when it has none.")


class TaskUpdate(WireModel):
    """PATCH /v1/tasks/{task}: rename a task."""

    name: TaskName | None = Field(..., description="The new name; null removes the task's name.")
    take_name: bool = Field(
        False,
        description="When another task of this key has `name`, move the name here (that task stays, unnamed) "
        "instead of answering 409 `name_taken`.",
    )


VerdictRating = Literal["better_than_few_shot", "as_good_as_few_shot", "below_few_shot", "no_effect"]


class Verdict(BaseModel):
    """How a task's vector did on held-out demonstrations, against zero-shot and few-shot prompting."""

    rating: VerdictRating
    summary: str = Field(..., description="The comparison in plain words.")
    advice: str | None = Field(None, description="What to try when the vector is weak.")
    metric: Literal["exact", "first_token"] = Field(..., description="What the fractions below measure.")
    steered: float
    zero_shot: float
    few_shot: float
    few_shot_k: int | None = None
    held_out: int = Field(..., description="Held-out demonstrations scored (0: scored on the training ones).")
    margin: float | None = Field(
        None,
        description="Half-width of the 95 % interval of steered minus few-shot on this many held-out "
        "demonstrations: a smaller gap may be chance. None when nothing was held out.",
    )


class TaskInfo(BaseModel):
    id: str
    status: TaskStatus
    method: str
    name: str | None = None
    num_demonstrations: int = 0
    demonstrations: list[Demonstration] | None = Field(
        None, description="As posted; empty for imported vectors; left out of lists unless asked for."
    )
    layers: list[int] | None = None
    default_strength: float | None = None
    template: Template | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] | None = None
    verdict: Verdict | None = None
    answer_end: dict[str, Any] | None = Field(
        None, description="Where answers end, learned from the demonstrations (applied unless a request sets `stop`)."
    )
    progress: dict[str, Any] | None = None
    error: str | None = None
    created_at: float | None = None
    updated_at: float | None = None


class TaskList(BaseModel):
    tasks: list[TaskInfo]
    total: int = Field(0, description="How many tasks the caller has in all.")
    next_offset: int | None = Field(None, description="Where the next page starts; null on the last page.")


class SteeringEntry(WireModel):
    task: str = Field(..., max_length=200, description="A registered task's id, or its name (within the caller's key).")
    strength: float | None = Field(None, description="Scale of the vector; the task's chosen default if unset.")
    layers: Annotated[Layers, Field(max_length=MAX_LAYERS_PER_ENTRY)] | None = Field(
        None, description="Restrict (or move) the injection to these layers; each layer counts once."
    )


ChatRole = Literal["system", "user", "assistant"]


class ChatMessage(WireModel):
    role: ChatRole
    content: str


class GenerateRequest(WireModel):
    prompt: str | None = None
    input: str | None = Field(None, description="Rendered with the first task's query template.")
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    steering: list[SteeringEntry] = Field(default_factory=list)
    max_new_tokens: int = Field(32, ge=1)
    temperature: Annotated[Temperature, Field(le=5.0)] = Field(0.0, description="0 means greedy.")
    top_p: TopP = 1.0
    seed: Seed | None = None
    stop: Stop | None = Field(
        None,
        description=(
            "Stop strings. Unset with `input`: the answer ends where the task's demonstrated answers end (learned "
            "from them: the template's newline, punctuation no answer contains, their word count); `[]` for none."
        ),
    )
    stream: bool = False

    @model_validator(mode="after")
    def _one_prompt(self) -> GenerateRequest:
        given = [x is not None for x in (self.prompt, self.input, self.messages)]
        if sum(given) != 1:
            raise ValueError("give exactly one of prompt, input or messages")
        return self


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int = 0


class GenerateResponse(BaseModel):
    text: str
    finish_reason: Literal["stop", "length"]
    usage: Usage
    timing: dict[str, float] = Field(default_factory=dict)
    steering: list[SteeringEntry] = Field(default_factory=list, description="What was applied, resolved.")


class ErrorBody(BaseModel):
    type: str
    message: str
    detail: Any = None


class ErrorResponse(BaseModel):
    error: ErrorBody
