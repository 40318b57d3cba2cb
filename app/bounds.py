"""The bounds that depend on this server: its settings and its model. Each is defined here, once.

Bounds that hold for every server (seed range, temperature floor, finite numbers, shapes of chat
content) live in the wire models (`steering/wire/protocol.py`) and are checked by FastAPI on the way in.
What needs the loaded model or the settings (how many layers, the strength ceiling, token limits)
is checked here, before anything reaches the generation backend, the worker or the store.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from app.error_codes import ApiErrors
from app.errors import quoted
from app.settings import Settings
from steering.vectors.task_vector import ActivationScale


class Bounds:
    def __init__(self, settings: Settings, num_layers: int, scale: ActivationScale) -> None:
        """`scale`: the model's own activation norms (`steering.methods.capture.activation_scale`), which bound the
        norms of every vector imported or read from the store (`steering.vectors.task_vector.check_norms`)."""
        self.settings, self.num_layers, self.scale = settings, num_layers, scale

    def strength(self, value: float, where: str = "strength") -> float:
        """A strength (requested, computed, imported or given as an option): finite, within ±max_strength."""
        limit = self.settings.max_strength
        if not (isinstance(value, (int, float)) and math.isfinite(value) and abs(value) <= limit):
            raise ApiErrors.STRENGTH_OUT_OF_RANGE(where=where, limit=limit)
        return float(value)

    def task_strength(self, task_id: str, entries: Sequence[tuple[int, float]]) -> None:
        """The entries (index, strength) of one request that name the same task add up, as one entry would:
        the sum of their |strength| is bounded by max_strength too."""
        limit = self.settings.max_strength
        total = sum(abs(strength) for _, strength in entries)
        if total > limit:
            where = ", ".join(f"steering.{i}" for i, _ in entries)
            raise ApiErrors.TASK_STRENGTH_OUT_OF_RANGE(where=where, task=quoted(task_id), total=total, limit=limit)

    def layers(self, layers: Iterable[int], where: str = "layers") -> tuple[int, ...]:
        """Layer indices of this model, each once, at least one."""
        unique = tuple(dict.fromkeys(layers))
        if not unique:
            raise ApiErrors.NO_LAYERS(where=where)
        bad = [la for la in unique if not 0 <= la < self.num_layers]
        if bad:
            raise ApiErrors.LAYER_OUT_OF_RANGE(where=where, layer=bad[0], last=self.num_layers - 1)
        return unique

    def new_tokens(self, value: int) -> int:
        if value > self.settings.max_new_tokens:
            raise ApiErrors.MAX_NEW_TOKENS_TOO_LARGE(limit=self.settings.max_new_tokens)
        return value
