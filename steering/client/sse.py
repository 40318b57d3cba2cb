"""Server-sent events of a streamed generation: lines to events, events to text pieces."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from steering.client.errors import SteeringAPIError
from steering.wire.protocol import GenerateResponse


@dataclass
class Event:
    event: str
    data: str


class SSEParser:
    """Turns the lines of a text/event-stream into events (comments and pings are skipped)."""

    def __init__(self) -> None:
        self._event, self._data = "message", []

    def feed(self, line: str) -> Event | None:
        line = line.rstrip("\r\n")
        if not line:
            if not self._data:
                self._event = "message"
                return None
            event = Event(self._event, "\n".join(self._data))
            self._event, self._data = "message", []
            return event
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
        return None


def stream_piece(event: Event, on_done: Callable[[GenerateResponse], None] | None) -> str | None:
    """The text of a token event; a done event is handed to `on_done`; an error event raises."""
    if event.event == "token":
        return str(json.loads(event.data)["text"])
    if event.event == "done" and on_done is not None:
        on_done(GenerateResponse.model_validate_json(event.data))
    elif event.event == "error":
        body = json.loads(event.data)
        error = body.get("error", body) if isinstance(body, dict) else {}
        raise SteeringAPIError(500, str(error.get("type", "error")), str(error.get("message", event.data)))
    return None


class StreamDecoder:
    """The text pieces of a generate stream, line by line (None for a line that completes no token)."""

    def __init__(self, on_done: Callable[[GenerateResponse], None] | None) -> None:
        self._parser, self._on_done = SSEParser(), on_done

    def feed(self, line: str) -> str | None:
        event = self._parser.feed(line)
        return stream_piece(event, self._on_done) if event else None
