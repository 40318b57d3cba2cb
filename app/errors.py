"""One JSON error shape for every failure: {"error": {"type", "message", ...}}."""

from __future__ import annotations

import logging
import sys
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.error_codes import ApiError, ApiErrors
from app.store import StoreFull, StoreUnavailable
from steering.generation.errors import GenerationError, NotServing, Overloaded, RowFailed, ShuttingDown
from steering.steer.inject import SteeringError
from steering.wire.protocol import NAMED_ERRORS, ErrorResponse

log = logging.getLogger(__name__)


# Documented on every /v1 operation: the one error shape, with the statuses the service answers with.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "The body is not valid JSON or not UTF-8.",
        401: "A valid API key is needed (Authorization: Bearer <key>).",
        404: "No such task for this key.",
        408: "The request body arrived too slowly.",
        409: "The task is not ready, or was made for another model.",
        413: "The body is too large.",
        422: "The request is invalid (the message says where).",
        429: "A quota is reached; retry after Retry-After seconds.",
        500: "A bug: the body carries a request id that is in the server's log.",
        503: "Overloaded, shutting down, or the task store is unreachable; retry after Retry-After seconds.",
    }.items()
}


QUOTED_CHARS = 40


def quoted(value: str) -> str:
    """A caller's value (an id, a name, a header) as an error message quotes it: its repr, cut to a short
    prefix when long, so an answer never carries a 5,000-character id back whole."""
    if len(value) <= QUOTED_CHARS:
        return repr(value)
    return f"{value[:QUOTED_CHARS]!r}... ({len(value)} characters)"


def shortened(value: str) -> str:
    """`quoted` without the quotes, for a place in a path (a field name in `loc`)."""
    return value if len(value) <= QUOTED_CHARS else f"{value[:QUOTED_CHARS]}... ({len(value)} characters)"


def unparsable_body(cause: BaseException | None) -> str | None:
    """What is wrong with a body that FastAPI could not parse (it says only "There was an error parsing the
    body"), from the exception its 400 was raised from; None when that says nothing more."""
    if isinstance(cause, UnicodeDecodeError) and isinstance(cause.object, bytes):
        at = cause.start
        if cause.encoding.replace("-", "").lower() == "utf8":
            return f"the body is not valid UTF-8 (byte 0x{cause.object[at]:02x} at position {at})"
        return f"the body is not valid UTF-8 (its first bytes make it {cause.encoding}, which fails at position {at})"
    if isinstance(cause, RecursionError):
        return f"the JSON is nested too deeply: the parser stops before {sys.getrecursionlimit()} levels"
    return None


def request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def error_response(status: int, type_: str, message: str, headers=None, /, **detail: Any) -> JSONResponse:
    body: dict[str, Any] = {"type": type_, "message": message}
    body.update({k: v for k, v in detail.items() if v is not None})
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def api_error_response(exc: ApiError) -> JSONResponse:
    return error_response(exc.status, exc.type, exc.message, exc.headers, **exc.detail)


# The library's generation errors, each as its entry of the table (first match; the message is the exception's own).
GENERATION_ERRORS: dict[type[Exception], ApiErrors] = {
    Overloaded: ApiErrors.OVERLOADED,
    ShuttingDown: ApiErrors.SHUTTING_DOWN,
    NotServing: ApiErrors.NOT_SERVING,
    RowFailed: ApiErrors.GENERATION_FAILED,
    SteeringError: ApiErrors.INVALID_STEERING,
    GenerationError: ApiErrors.GENERATION_UNAVAILABLE,  # any other kind a backend may raise
}


def generation_error(exc: Exception) -> ApiError:
    """A generation backend's error (a `GenerationError` or `SteeringError`) as the ApiError it answers, with the
    Retry-After the backend asks for."""
    error = next(code for kind, code in GENERATION_ERRORS.items() if isinstance(exc, kind))(reason=exc)
    retry = getattr(exc, "retry_after_s", None)
    if retry:
        error.headers = {"Retry-After": str(max(1, round(retry)))}
    return error


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GenerationError)
    @app.exception_handler(SteeringError)
    async def _generation(request: Request, exc: Exception) -> JSONResponse:
        return api_error_response(generation_error(exc))

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return api_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "loc": [shortened(p) if isinstance(p, str) else p for p in e.get("loc", ())],
                "msg": e.get("msg", ""),
                "type": e.get("type", ""),
            }
            for e in exc.errors()
        ]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request", "type": ""}
        where = ".".join(str(p) for p in first["loc"] if p != "body")
        type_ = first["type"] if first["type"] in NAMED_ERRORS else "invalid_request"
        return error_response(422, type_, f"{where}: {first['msg']}" if where else first["msg"], errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {
            400: "invalid_request",
            404: "not_found",
            405: "method_not_allowed",
            401: "unauthorized",
            408: "request_timeout",
            413: "body_too_large",
        }.get(exc.status_code, "http_error")
        message = (unparsable_body(exc.__cause__) if exc.status_code == 400 else None) or str(exc.detail)
        return error_response(exc.status_code, kind, message, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        """A genuine bug: the client gets an id to quote, the log has the traceback under the same id."""
        rid = request_id(request)
        log.error("internal error in %s %s [request %s]", request.method, request.url.path, rid, exc_info=exc)
        return error_response(
            500,
            "internal_error",
            "the server failed to handle this request; quote the request id",
            {"X-Request-ID": rid} if rid else None,
            request_id=rid,
        )

    @app.exception_handler(StoreFull)
    async def _store_full(request: Request, exc: StoreFull) -> JSONResponse:
        log.error("store full: %s", exc)
        return api_error_response(ApiErrors.STORE_FULL())

    @app.exception_handler(StoreUnavailable)
    async def _store_down(request: Request, exc: StoreUnavailable) -> JSONResponse:
        log.warning("store unavailable: %s", exc)
        return api_error_response(ApiErrors.STORE_UNAVAILABLE())
