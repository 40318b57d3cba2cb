"""POST /v1/generate: the native generation endpoint, JSON or server-sent events."""

from __future__ import annotations

import json
import time

from fastapi import APIRouter, Depends, Request

from app.generation import Sampling, applied
from app.services import Services, owner, services
from steering.wire.protocol import GenerateRequest, GenerateResponse, Usage

router = APIRouter(prefix="/v1", tags=["generate"])


@router.post("/generate", response_model=GenerateResponse)
async def generate(
    body: GenerateRequest, http: Request, svc: Services = Depends(services), who: str | None = Depends(owner)
):
    started = time.perf_counter()
    # A raw `prompt` is generated as asked; `input` and `messages` naming a task end where its answers end.
    sampling = Sampling(
        body.max_new_tokens, body.temperature, body.top_p, body.seed, body.stop, task_answer_end=body.prompt is None
    )
    prepared = await svc.generation.prepare(
        prompt=body.prompt,
        input_text=body.input,
        messages=body.messages,
        steering=body.steering,
        sampling=sampling,
        owner=who,
    )
    request, resolved = prepared.request, applied(prepared.terms, body.steering)
    if body.stream:
        pending = svc.generation.start_stream(request)

        async def events():
            async for piece in svc.generation.pieces(pending):
                yield {"event": "token", "data": json.dumps({"text": piece})}
            result = await pending.future
            yield {"event": "done", "data": _response(result, resolved, started).model_dump_json()}

        return svc.generation.sse(events(), http)
    result = await svc.generation.complete(request, http)
    return _response(result, resolved, started)


def _response(result, resolved, started: float) -> GenerateResponse:
    return GenerateResponse(
        text=result.text,
        finish_reason="length" if result.finish_reason == "length" else "stop",
        usage=Usage(
            prompt_tokens=result.prompt_tokens,
            completion_tokens=len(result.token_ids),
            total_tokens=result.prompt_tokens + len(result.token_ids),
        ),
        timing={
            **{k: round(v, 4) for k, v in result.timing.items()},
            "request_s": round(time.perf_counter() - started, 4),
        },
        steering=resolved,
    )
