"""Server-sent events for every streaming endpoint: one place for errors, pings and the send timeout.

Once a stream has started its status is 200, so a failure after that is sent as a last event in the
JSON error shape (`{"error": {...}}`) rather than a dropped connection; the stream then ends.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

from sse_starlette import EventSourceResponse

from app.error_codes import ApiError
from app.errors import GENERATION_ERRORS, generation_error

log = logging.getLogger(__name__)

PING_S = 15


def error_event(exc: BaseException, request_id: str | None, event: str | None) -> dict:
    if isinstance(exc, tuple(GENERATION_ERRORS)):
        exc = generation_error(exc)
    if isinstance(exc, ApiError):
        body = {"type": exc.type, "message": exc.message, **{k: v for k, v in exc.detail.items() if v is not None}}
    else:
        log.error("a stream failed [request %s]", request_id, exc_info=exc)
        body = {
            "type": "internal_error",
            "message": "generation failed; quote the request id",
            "request_id": request_id,
        }
    out = {"data": json.dumps({"error": body})}
    return {**out, "event": event} if event else out


def sse_response(
    events: AsyncIterator[dict],
    *,
    send_timeout_s: float,
    request_id: str | None,
    error_event_name: str | None = "error",
    done: str | None = None,
) -> EventSourceResponse:
    """Stream `events`; a failure becomes a final error event; `done` (OpenAI's "[DONE]") closes a good stream."""

    async def guarded() -> AsyncIterator[dict]:
        try:
            async for event in events:
                yield event
        except Exception as exc:
            yield error_event(exc, request_id, error_event_name)
            return
        if done is not None:
            yield {"data": done}

    return EventSourceResponse(guarded(), ping=PING_S, send_timeout=send_timeout_s)
