"""Bearer API keys. A key is never stored: tasks record the key's hash as their owner."""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request

from app.error_codes import ApiErrors


def owner_of(key: str) -> str:
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:16]


class KeyChecker:
    def __init__(self, keys: list[str]) -> None:
        self.keys = keys

    @property
    def open(self) -> bool:
        return not self.keys

    def owner(self, request: Request) -> str | None:
        """The caller's owner id (None on an open server); 401 without a valid key."""
        if self.open:
            return None
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiErrors.NO_API_KEY()
        for key in self.keys:
            if hmac.compare_digest(key.encode(), token.strip().encode()):
                return owner_of(key)
        raise ApiErrors.INVALID_API_KEY()
