"""Why a generation request was not answered, whatever the backend: one base class, mapped to HTTP by the app."""

from __future__ import annotations


class GenerationError(Exception):
    """A request the backend did not run to its end; `retry_after_s` is set where retrying soon may work."""

    retry_after_s: float | None = None


class Overloaded(GenerationError):
    retry_after_s = 1.0

    def __init__(self) -> None:
        super().__init__("too many requests are waiting; retry shortly")


class ShuttingDown(GenerationError):
    retry_after_s = 1.0

    def __init__(self) -> None:
        super().__init__("this replica is shutting down; retry")


class NotServing(GenerationError):
    retry_after_s = 1.0

    def __init__(self) -> None:
        super().__init__("this replica computes vectors only (STEER_ROLE=worker)")


class RowFailed(GenerationError):
    """One row could not go on (non-finite logits, a failed sampler); the other rows are unaffected."""
