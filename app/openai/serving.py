"""Engine results as OpenAI bodies, and a generation's text pieces as OpenAI stream chunks.

Streams go out through `GenerationService.sse`, the one streaming path (pings, send timeout, a final
error event, `[DONE]`); each chunk is sent as `json.dumps` of its model, as it always was.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Request
from pydantic import BaseModel
from sse_starlette import EventSourceResponse

from app.error_codes import ApiErrors
from app.errors import quoted
from app.generation import GenerationService, Sampling
from app.openai.protocol import ChatCompletionRequest, CompletionRequest
from app.openai.responses import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    ChatMessageOut,
    Completion,
    CompletionChoice,
    CompletionChunk,
    FinishReason,
    ModelCard,
    ModelList,
    Usage,
)
from steering.generation.backend import Submission
from steering.generation.rows import GenerationResult

DEFAULT_MAX_TOKENS = 64


@dataclass(frozen=True)
class Header:
    """What every body and chunk of one answer repeats."""

    id: str
    created: int
    model: str

    @classmethod
    def new(cls, prefix: str, model: str) -> Header:
        return cls(id=f"{prefix}-{uuid.uuid4().hex}", created=int(time.time()), model=model)


def sampling(body: CompletionRequest | ChatCompletionRequest, max_new_tokens: int) -> Sampling:
    """A request without max_tokens gets the default, within the server's limit (never a 422 for leaving it out)."""
    default = min(DEFAULT_MAX_TOKENS, max_new_tokens)
    return Sampling(body.new_tokens(default), body.temperature, body.top_p, body.seed, body.stop, task_answer_end=True)


def finish_reason(result: GenerationResult) -> FinishReason:
    return "length" if result.finish_reason == "length" else "stop"


def model_list(name: str) -> ModelList:
    return ModelList(data=[ModelCard(id=name)])


def model_names(served: str, configured: str) -> frozenset[str]:
    """The names a request's `model` may give: the id /v1/models lists, the model setting the server was
    started with (`STEER_MODEL`: "default", a hub id, a folder), and the last path part of either (a hub
    id's model name, a folder's name)."""
    names = {served, configured}
    names |= {name.rstrip("/").rsplit("/", 1)[-1] for name in names}
    return frozenset(name for name in names if name)


def check_model(requested: str | None, served: str, configured: str) -> None:
    """404 `model_not_found` for a model this server does not serve (as OpenAI and vLLM answer); unset is
    the served model."""
    if requested is None or requested in model_names(served, configured):
        return
    raise ApiErrors.MODEL_NOT_FOUND(requested=quoted(requested), served=served)


def completion(header: Header, text: str, result: GenerationResult) -> Completion:
    choice = CompletionChoice(text=text, finish_reason=finish_reason(result))
    return Completion(
        id=header.id, created=header.created, model=header.model, choices=[choice], usage=Usage.of(result)
    )


async def completion_chunks(
    generation: GenerationService, submission: Submission, header: Header, echo: str = ""
) -> AsyncIterator[CompletionChunk]:
    """The completion's pieces; with `echo` (the prompt of an `echo: true` request) that text first."""

    def chunk(text: str, finish: FinishReason | None, usage: Usage | None = None) -> CompletionChunk:
        choice = CompletionChoice(text=text, finish_reason=finish)
        return CompletionChunk(id=header.id, created=header.created, model=header.model, choices=[choice], usage=usage)

    if echo:
        yield chunk(echo, None)
    async for piece in generation.pieces(submission):
        yield chunk(piece, None)
    result = await submission.future
    yield chunk("", finish_reason(result), Usage.of(result))


def chat_completion(header: Header, result: GenerationResult) -> ChatCompletion:
    choice = ChatChoice(message=ChatMessageOut(content=result.text), finish_reason=finish_reason(result))
    return ChatCompletion(
        id=header.id, created=header.created, model=header.model, choices=[choice], usage=Usage.of(result)
    )


async def chat_chunks(
    generation: GenerationService, submission: Submission, header: Header
) -> AsyncIterator[ChatCompletionChunk]:
    def chunk(delta: ChatDelta, finish: FinishReason | None, usage: Usage | None = None) -> ChatCompletionChunk:
        choice = ChatChunkChoice(delta=delta, finish_reason=finish)
        return ChatCompletionChunk(
            id=header.id, created=header.created, model=header.model, choices=[choice], usage=usage
        )

    yield chunk(ChatDelta(role="assistant", content=""), None)
    async for piece in generation.pieces(submission):
        yield chunk(ChatDelta(content=piece), None)
    result = await submission.future
    yield chunk(ChatDelta(), finish_reason(result), Usage.of(result))


def sse(chunks: AsyncIterator[BaseModel], http: Request, generation: GenerationService) -> EventSourceResponse:
    async def events() -> AsyncIterator[dict]:
        async for chunk in chunks:
            yield {"data": json.dumps(chunk.model_dump())}

    return generation.sse(events(), http, openai=True)
