"""OpenAI-compatible endpoints: the official client works unchanged, steering goes in `extra_body`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import TypeVar

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel
from sse_starlette import EventSourceResponse

from app.generation import GenerationService
from app.openai import serving
from app.openai.protocol import ChatCompletionRequest, CompletionRequest
from app.openai.responses import ChatCompletion, Completion, ModelList
from app.services import Services, owner, services
from steering.generation.backend import Submission
from steering.generation.rows import GenerationResult
from steering.wire.protocol import ChatMessage

router = APIRouter(prefix="/v1", tags=["openai"])
T = TypeVar("T", Completion, ChatCompletion)


@router.get("/models", response_model=ModelList)
async def list_models(svc: Services = Depends(services), who: str | None = Depends(owner)) -> ModelList:
    return serving.model_list(svc.lm.name)


@router.post("/completions", response_model=Completion)
async def completions(
    body: CompletionRequest, http: Request, svc: Services = Depends(services), who: str | None = Depends(owner)
) -> Completion | EventSourceResponse:
    def respond(header: serving.Header, result: GenerationResult) -> Completion:
        return serving.completion(header, (body.text() + result.text) if body.echo else result.text, result)

    chunks = partial(serving.completion_chunks, echo=body.text() if body.echo else "")
    return await _answer(body, http, svc, who, body.text(), None, "cmpl", chunks, respond)


@router.post("/chat/completions", response_model=ChatCompletion)
async def chat_completions(
    body: ChatCompletionRequest, http: Request, svc: Services = Depends(services), who: str | None = Depends(owner)
) -> ChatCompletion | EventSourceResponse:
    messages = [m.plain() for m in body.messages]
    return await _answer(body, http, svc, who, None, messages, "chatcmpl", serving.chat_chunks, serving.chat_completion)


async def _answer(
    body: CompletionRequest | ChatCompletionRequest,
    http: Request,
    svc: Services,
    who: str | None,
    prompt: str | None,
    messages: list[ChatMessage] | None,
    id_prefix: str,
    chunks: Callable[[GenerationService, Submission, serving.Header], AsyncIterator[BaseModel]],
    respond: Callable[[serving.Header, GenerationResult], T],
) -> T | EventSourceResponse:
    """What both endpoints do: check the model, prepare the request, then stream its chunks or answer its body."""
    serving.check_model(body.model, svc.lm.name, svc.settings.model)
    request = (
        await svc.generation.prepare(
            prompt=prompt,
            input_text=None,
            messages=messages,
            steering=body.steering,
            sampling=serving.sampling(body, svc.settings.max_new_tokens),
            owner=who,
        )
    ).request
    header = serving.Header.new(id_prefix, svc.lm.name)
    if body.stream:
        submission = svc.generation.start_stream(request)
        return serving.sse(chunks(svc.generation, submission, header), http, svc.generation)
    return respond(header, await svc.generation.complete(request, http))
