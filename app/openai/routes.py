"""OpenAI-compatible endpoints: the official client works unchanged, steering goes in `extra_body`."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from sse_starlette import EventSourceResponse

from app.openai import serving
from app.openai.protocol import ChatCompletionRequest, CompletionRequest
from app.openai.responses import ChatCompletion, Completion, ModelList
from app.services import Services, owner, services

router = APIRouter(prefix="/v1", tags=["openai"])


@router.get("/models", response_model=ModelList)
async def list_models(svc: Services = Depends(services), who: str | None = Depends(owner)) -> ModelList:
    return serving.model_list(svc.lm.name)


@router.post("/completions", response_model=Completion)
async def completions(
    body: CompletionRequest, http: Request, svc: Services = Depends(services), who: str | None = Depends(owner)
) -> Completion | EventSourceResponse:
    request = await svc.generation.prepare(
        prompt=body.text(),
        input_text=None,
        messages=None,
        steering=body.steering,
        sampling=serving.sampling(body, svc.settings.max_new_tokens),
        owner=who,
    )
    header = serving.Header.new("cmpl", svc.lm.name)
    if body.stream:
        pending = svc.generation.start_stream(request)
        return serving.sse(serving.completion_chunks(svc.generation, pending, header), http, svc.generation)
    result = await svc.generation.complete(request, http)
    text = (body.text() + result.text) if body.echo else result.text
    return serving.completion(header, text, result)


@router.post("/chat/completions", response_model=ChatCompletion)
async def chat_completions(
    body: ChatCompletionRequest, http: Request, svc: Services = Depends(services), who: str | None = Depends(owner)
) -> ChatCompletion | EventSourceResponse:
    request = await svc.generation.prepare(
        prompt=None,
        input_text=None,
        messages=[m.plain() for m in body.messages],
        steering=body.steering,
        sampling=serving.sampling(body, svc.settings.max_new_tokens),
        owner=who,
    )
    header = serving.Header.new("chatcmpl", svc.lm.name)
    if body.stream:
        pending = svc.generation.start_stream(request)
        return serving.sse(serving.chat_chunks(svc.generation, pending, header), http, svc.generation)
    result = await svc.generation.complete(request, http)
    return serving.chat_completion(header, result)
