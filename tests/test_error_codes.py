"""The table of the service's errors (app/error_codes.py): each entry formats into an ApiError."""

from __future__ import annotations

import string

import pytest

from app.error_codes import ApiError, ApiErrors


def _fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


@pytest.mark.parametrize("code", list(ApiErrors), ids=lambda c: c.name)
def test_every_entry_raises_its_status_type_and_message(code: ApiErrors) -> None:
    spec = code.value
    assert set(spec.echo) <= _fields(spec.message), "an echoed field must be a field of the message"
    exc = code(**{name: 1.0 for name in _fields(spec.message)})
    assert isinstance(exc, ApiError)
    assert (exc.status, exc.type) == (spec.status, spec.type)
    assert exc.headers == (dict(spec.headers) or None)
    assert set(exc.detail) == set(spec.echo) | set(spec.extra)


def test_a_message_is_its_template_with_the_fields() -> None:
    exc = ApiErrors.PROMPT_TOO_LONG(tokens=12, limit=10)
    assert exc.message == "the prompt has 12 tokens; the limit is 10"
    assert ApiErrors.TASK_NOT_READY(task_id="t", status="pending").detail == {"status": "pending"}
    assert ApiErrors.IMPORT_TIMEOUT(timeout_s=30.4).headers == {"Retry-After": "5"}
