"""The OpenAI request bodies for completions and chat completions, plus our `steering` field.

Unknown OpenAI fields are accepted and ignored (clients send many), except those whose meaning we
cannot honour (n > 1, logprobs, non-text content), which are refused with 422 rather than silently
wrong. Sampler bounds are the ones of the native API (`steering.protocol`), defined there once.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from steering.protocol import ChatMessage, Seed, SteeringEntry, Stop, Temperature, TopP, valid_text


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _valid_text(cls, data: Any) -> Any:
        return valid_text(data)

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: Annotated[Temperature, Field(le=2.0)] = 1.0
    top_p: TopP = 1.0
    seed: Seed | None = None
    stop: Stop | None = None
    stream: bool = False
    n: int = Field(1, ge=1, le=1, description="Only one choice per request is supported.")
    steering: list[SteeringEntry] = Field(default_factory=list)

    def new_tokens(self, default: int) -> int:
        return self.max_completion_tokens or self.max_tokens or default


class CompletionRequest(_Common):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)] = Field(
        ..., description="One prompt (a list of one is accepted, as the OpenAI client may send it)."
    )
    logprobs: None = None
    echo: bool = False

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class TextPart(BaseModel):
    """The only content part this server understands; images and audio are refused, not dropped."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[TextPart] | None = None

    def plain(self) -> ChatMessage:
        parts = self.content if isinstance(self.content, list) else [TextPart(type="text", text=self.content or "")]
        text = "".join(part.text for part in parts)
        return ChatMessage(role="system" if self.role == "developer" else self.role, content=text)


class ChatCompletionRequest(_Common):
    messages: list[ChatMessageIn] = Field(..., min_length=1)
    logprobs: bool | None = None

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("logprobs are not supported")
        return value
