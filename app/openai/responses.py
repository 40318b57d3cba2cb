"""The OpenAI response bodies and stream chunks, as the official clients parse them.

Field order is the wire order. A field OpenAI leaves out when it has nothing to say (a chunk's `usage`
before the last chunk, a delta's `role` after the first) is omitted when None; every other None is sent
as `null`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from steering.generation.rows import GenerationResult

FinishReason = Literal["stop", "length"]


def _omitted_when_none() -> Any:
    return Field(None, exclude_if=lambda value: value is None)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, result: GenerationResult) -> Usage:
        completion = len(result.token_ids)
        return cls(
            prompt_tokens=result.prompt_tokens,
            completion_tokens=completion,
            total_tokens=result.prompt_tokens + completion,
        )


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: FinishReason | None
    logprobs: None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class CompletionChunk(BaseModel):
    """OpenAI streams completions as `text_completion` objects too; only the last carries `usage`."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = _omitted_when_none()


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatMessageOut
    finish_reason: FinishReason
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    created: int
    model: str
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = _omitted_when_none()
    content: str | None = _omitted_when_none()


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    finish_reason: FinishReason | None


class ChatCompletionChunk(BaseModel):
    id: str
    created: int
    model: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]
    usage: Usage | None = _omitted_when_none()


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "steering-service"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
