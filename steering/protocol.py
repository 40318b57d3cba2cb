"""The HTTP API's wire format, shared by the server (`app/`) and the Python client.

These pydantic models are the contract of the service: the server validates requests with
them and the client builds and parses them, so both sides always agree.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Method = Literal["icv", "task_vector", "function_vector", "soft_injection", "contrastive", "auto"]
TaskStatus = Literal["pending", "running", "ready", "failed"]


class Demonstration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: str = Field(..., description="The demonstration's input, e.g. 'hot'.")
    output: str = Field(..., description="What the task maps the input to, e.g. 'cold'.")


class Template(BaseModel):
    """How demonstrations and queries are written out for the model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    example: str = Field("Q: {input}\nA: {output}", description="One demonstration.")
    query: str = Field("Q: {input}\nA:", description="A zero-shot query.")
    separator: str = Field("\n\n", description="Between demonstrations in a few-shot prompt.")

    @model_validator(mode="after")
    def _placeholders(self) -> Template:
        if "{input}" not in self.example or "{output}" not in self.example:
            raise ValueError("template.example must contain {input} and {output}")
        if "{input}" not in self.query:
            raise ValueError("template.query must contain {input}")
        return self


class TaskCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    demonstrations: list[Demonstration] = Field(..., min_length=1)
    method: Method = "auto"
    name: str | None = Field(None, max_length=200)
    template: Template | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class TaskCreated(BaseModel):
    id: str
    status: TaskStatus


class TaskInfo(BaseModel):
    id: str
    status: TaskStatus
    method: str
    name: str | None = None
    num_demonstrations: int = 0
    demonstrations: list[Demonstration] | None = Field(None, description="As posted; empty for imported vectors.")
    layers: list[int] | None = None
    default_strength: float | None = None
    template: Template | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] | None = None
    progress: dict[str, Any] | None = None
    error: str | None = None
    created_at: float | None = None
    updated_at: float | None = None


class TaskList(BaseModel):
    tasks: list[TaskInfo]


class SteeringEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: str = Field(..., description="A registered task's id.")
    strength: float | None = Field(None, description="Scale of the vector; the task's chosen default if unset.")
    layers: list[int] | None = Field(None, description="Restrict (or move) the injection to these layers.")


class ChatMessage(BaseModel):
    role: str
    content: str


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str | None = None
    input: str | None = Field(None, description="Rendered with the first task's query template.")
    messages: list[ChatMessage] | None = None
    steering: list[SteeringEntry] = Field(default_factory=list)
    max_new_tokens: int = Field(32, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=5.0, description="0 means greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: list[str] | str | None = Field(
        None, description="Stop strings. Unset with `input`: the template's stop rule (a newline)."
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
