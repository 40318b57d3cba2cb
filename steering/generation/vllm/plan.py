"""A request's steering plan as it travels to vLLM's workers: compact JSON in `SamplingParams.extra_args`.

The plan names vectors by content id (they were loaded into the workers beforehand, `slots.py`) with the
strength and layers of each term: `[["<vector id>", strength, [layer, ...]], ...]`. Terms of strength 0
change nothing and are left out, so a plan of only such terms is no plan, and the request runs plain.

A steered prompt must never share KV blocks with a plain or differently steered one: `cache_salt` is
derived from the plan and vLLM mixes it into the first block's hash.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

EXTRA_ARGS_KEY = "steering_plan"
_SALT_PREFIX = "steer-"


@dataclass(frozen=True)
class PlannedTerm:
    vector_id: str
    strength: float
    layers: tuple[int, ...]


def encode_plan(terms: Sequence[PlannedTerm]) -> str | None:
    """The plan's JSON, or None when no term changes anything (a plain request)."""
    kept = [[t.vector_id, float(t.strength), list(t.layers)] for t in terms if t.strength != 0.0]
    return json.dumps(kept, separators=(",", ":")) if kept else None


def decode_plan(text: str) -> tuple[PlannedTerm, ...]:
    """Read a plan written by `encode_plan` (the front end wrote it: a malformed one is a bug, so this raises)."""
    raw = json.loads(text)
    if not isinstance(raw, list):
        raise ValueError("a steering plan is a JSON list of [vector_id, strength, layers]")
    return tuple(PlannedTerm(str(v), float(strength), tuple(int(la) for la in layers)) for v, strength, layers in raw)


def cache_salt(plan: str) -> str:
    """The prefix-cache salt of a plan: the same plan shares KV blocks, any other plan (or none) does not."""
    return _SALT_PREFIX + hashlib.sha256(plan.encode()).hexdigest()[:48]
