"""Request bodies and parameters built from the client's friendly arguments, with the wire models."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from steering.tasks.datasets import read_demonstrations
from steering.wire.protocol import (
    ChatMessage,
    Demonstration,
    GenerateRequest,
    SteeringEntry,
    TaskCreate,
    TaskUpdate,
    Template,
)

VectorFormat = Literal["safetensors", "gguf"]
DemoLike = Demonstration | Mapping[str, str] | tuple[str, str]
SteeringLike = SteeringEntry | str | tuple[str, float] | Mapping[str, Any]


def demonstrations(demos: str | Path | Iterable[DemoLike]) -> list[Demonstration]:
    """Demonstrations from a file path, text (`a -> b` lines or JSONL), or pairs / dicts / models."""
    if isinstance(demos, (str, Path)):
        return read_demonstrations(demos)
    out = []
    for demo in demos:
        if isinstance(demo, Demonstration):
            out.append(demo)
        elif isinstance(demo, tuple):
            out.append(Demonstration(input=demo[0], output=demo[1]))
        else:
            out.append(Demonstration(**demo))
    return out


def task_path(task: str, tail: str = "") -> str:
    """The path of a task given by its id or name (a name may hold spaces, `?`, `#`, `%`...)."""
    return f"/v1/tasks/{quote(task, safe='')}{tail}"


def page_params(offset: int) -> dict[str, int]:
    return {"offset": offset, "limit": 200}


def steering_entries(steering: Iterable[SteeringLike] | SteeringLike | None) -> list[SteeringEntry]:
    """Steering entries from tasks (`"task-..."` ids or names), `(task, strength)` pairs, dicts or `SteeringEntry`
    models."""
    if steering is None:
        return []
    if isinstance(steering, (str, SteeringEntry, Mapping)):
        steering = [steering]
    out = []
    for entry in steering:
        if isinstance(entry, SteeringEntry):
            out.append(entry)
        elif isinstance(entry, str):
            out.append(SteeringEntry(task=entry))
        elif isinstance(entry, tuple):
            out.append(SteeringEntry(task=entry[0], strength=entry[1]))
        else:
            out.append(SteeringEntry(**entry))
    return out


def register_body(
    demos: str | Path | Iterable[DemoLike],
    method: str,
    name: str | None,
    template: Template | Mapping[str, str] | Literal["chat"] | None,
    options: Mapping[str, Any] | None,
    take_name: bool = False,
) -> dict[str, Any]:
    body = TaskCreate(
        demonstrations=demonstrations(demos),
        method=method,  # type: ignore[arg-type]  # validated by the model
        name=name,
        take_name=take_name,
        template=Template(**template) if isinstance(template, Mapping) else template,
        options=dict(options or {}),
    )
    # `take_name` only when asked for: a server from before names were unique refuses the field.
    return body.model_dump(mode="json", exclude_none=True, exclude=None if take_name else {"take_name"})


def rename_body(name: str | None, take_name: bool) -> dict[str, Any]:
    return TaskUpdate(name=name, take_name=take_name).model_dump(mode="json")


def generate_body(
    prompt: str | None,
    input: str | None,
    messages: Sequence[ChatMessage | Mapping[str, str]] | None,
    steering: Iterable[SteeringLike] | SteeringLike | None,
    stream: bool,
    **sampling: Any,
) -> dict[str, Any]:
    request = GenerateRequest(
        prompt=prompt,
        input=input,
        messages=[m if isinstance(m, ChatMessage) else ChatMessage(**m) for m in messages] if messages else None,
        steering=steering_entries(steering),
        stream=stream,
        **{k: v for k, v in sampling.items() if v is not None},
    )
    return request.model_dump(mode="json", exclude_none=True)


def import_params(data: bytes, format: VectorFormat | None, name: str | None) -> dict[str, str]:
    params = {"format": format or ("gguf" if data[:4] == b"GGUF" else "safetensors")}
    if name:
        params["name"] = name
    return params


def read_vector_file(source: bytes | str | Path) -> tuple[bytes, VectorFormat | None]:
    """The bytes to import, and the format a file's suffix names (None: let the server guess)."""
    if isinstance(source, bytes):
        return source, None
    path = Path(source)
    suffix = path.suffix.lower().lstrip(".")
    return path.read_bytes(), suffix if suffix in ("gguf", "safetensors") else None  # type: ignore[return-value]
