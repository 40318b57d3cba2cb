"""A Python client for the steering service's HTTP API: `Client` (sync) and `AsyncClient`, over httpx.

    from steering.client import Client

    with Client("http://127.0.0.1:8000") as client:
        task = client.register("hot -> cold\\nbig -> small\\nfast -> slow", method="task_vector", wait=True)
        print(client.generate(input="tall", steering=[task.id]).text)
        for piece in client.stream_generate(input="early", steering=[(task.id, 1.5)]):
            print(piece, end="", flush=True)

Requests and responses are the pydantic models of `steering.wire.protocol`, the same ones the server
validates with. Every error answer raises a `SteeringAPIError` subclass chosen by its status and type.
Both clients run the same I/O-free operations (`operations.py`).
"""

# ruff: noqa: F401
from __future__ import annotations

# The other names stay importable from here, as when the client was one module.
from steering.client.bodies import (
    DemoLike,
    SteeringLike,
    VectorFormat,
    demonstrations,
    generate_body,
    import_params,
    read_vector_file,
    register_body,
    steering_entries,
)
from steering.client.clients import DEFAULT_URL, AsyncClient, Client
from steering.client.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    NotReady,
    Overloaded,
    SteeringAPIError,
    SteeringError,
    TaskFailed,
    TooLarge,
    Unauthorized,
    WaitTimeout,
    api_error,
)
from steering.client.operations import FINISHED, ProgressCallback
from steering.client.sse import Event, SSEParser

__all__ = [
    "AsyncClient",
    "BadRequest",
    "Client",
    "Conflict",
    "Forbidden",
    "NotFound",
    "NotReady",
    "Overloaded",
    "SteeringAPIError",
    "SteeringError",
    "TaskFailed",
    "TooLarge",
    "Unauthorized",
    "WaitTimeout",
]
