"""OpenAI-compatible endpoints: the official client works unchanged, steering goes in `extra_body`."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Request
from sse_starlette import EventSourceResponse

from app.generation import Sampling
from app.openai_protocol import ChatCompletionRequest, CompletionRequest, UsageOut
from app.services import Services, owner, services
from steering.engine import GenerationResult

router = APIRouter(prefix="/v1", tags=["openai"])
DEFAULT_MAX_TOKENS = 64


def _usage(result: GenerationResult) -> dict:
    completion = len(result.token_ids)
    return UsageOut(
        prompt_tokens=result.prompt_tokens, completion_tokens=completion, total_tokens=result.prompt_tokens + completion
    ).model_dump()


def _finish(result: GenerationResult) -> str:
    return "length" if result.finish_reason == "length" else "stop"


def _sampling(body, svc: Services) -> Sampling:
    """A request without max_tokens gets the default, within the server's limit (never a 422 for leaving it out)."""
    default = min(DEFAULT_MAX_TOKENS, svc.settings.max_new_tokens)
    return Sampling(body.new_tokens(default), body.temperature, body.top_p, body.seed, body.stop)


def _sse(chunks: AsyncIterator[dict], http: Request, svc: Services) -> EventSourceResponse:
    async def events():
        async for chunk in chunks:
            yield {"data": json.dumps(chunk)}

    return svc.generation.sse(events(), http, openai=True)


@router.get("/models")
async def list_models(svc: Services = Depends(services), who: str | None = Depends(owner)) -> dict:
    return {
        "object": "list",
        "data": [{"id": svc.lm.name, "object": "model", "created": 0, "owned_by": "steering-service"}],
    }


@router.post("/completions")
async def completions(
    body: CompletionRequest, http: Request, svc: Services = Depends(services), who: str | None = Depends(owner)
):
    request = await svc.generation.prepare(
        prompt=body.text(),
        input_text=None,
        messages=None,
        steering=body.steering,
        sampling=_sampling(body, svc),
        owner=who,
    )
    base = {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": svc.lm.name,
    }
    if body.stream:
        pending = svc.generation.start_stream(request)

        async def chunks():
            async for piece in svc.generation.pieces(pending):
                yield {**base, "choices": [{"index": 0, "text": piece, "finish_reason": None, "logprobs": None}]}
            result = await pending.future
            yield {
                **base,
                "choices": [{"index": 0, "text": "", "finish_reason": _finish(result), "logprobs": None}],
                "usage": _usage(result),
            }

        return _sse(chunks(), http, svc)
    result = await svc.generation.complete(request, http)
    text = (body.text() + result.text) if body.echo else result.text
    return {
        **base,
        "choices": [{"index": 0, "text": text, "finish_reason": _finish(result), "logprobs": None}],
        "usage": _usage(result),
    }


@router.post("/chat/completions")
async def chat_completions(
    body: ChatCompletionRequest, http: Request, svc: Services = Depends(services), who: str | None = Depends(owner)
):
    request = await svc.generation.prepare(
        prompt=None,
        input_text=None,
        messages=[m.plain() for m in body.messages],
        steering=body.steering,
        sampling=_sampling(body, svc),
        owner=who,
    )
    base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": svc.lm.name}
    if body.stream:
        pending = svc.generation.start_stream(request)

        async def chunks():
            chunk = {**base, "object": "chat.completion.chunk"}
            yield {
                **chunk,
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
            }
            async for piece in svc.generation.pieces(pending):
                yield {**chunk, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
            result = await pending.future
            yield {
                **chunk,
                "choices": [{"index": 0, "delta": {}, "finish_reason": _finish(result)}],
                "usage": _usage(result),
            }

        return _sse(chunks(), http, svc)
    result = await svc.generation.complete(request, http)
    return {
        **base,
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text},
                "finish_reason": _finish(result),
                "logprobs": None,
            }
        ],
        "usage": _usage(result),
    }
