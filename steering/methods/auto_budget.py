"""How long `auto` may compute: which candidates it starts.

A fixed wall-clock budget picks the method by the model's size and the machine's load: on the default model
every candidate fits in 240 s, on a model four times larger only the task vector did, and a busy machine
changed the choice from one run to the next. So by default the budget is the candidates themselves, counted
in the model's own compute (each candidate's relative cost, in units of the first one's measured time):
every candidate the request names runs, on any model and under any load, and the choice depends only on
the demonstrations. A wall-clock ceiling stays as protection, so a request cannot compute without end on a
slow model or machine; it sits under the caller's time limit (the server's compute timeout,
`STEER_COMPUTE_TIMEOUT_S`, 30 min by default), so `auto` stops starting candidates and returns the best it
has instead of the task failing. An explicit `time_budget_s` is honoured as given, a wall-clock budget as
before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The share of the caller's time limit past which no further candidate starts when the request sets no
# budget: the rest is the margin for a candidate that takes longer than its relative cost predicts, so the
# task ends with the best candidate so far instead of failing at the limit.
CEILING_SHARE = 5 / 6
DEFAULT_TIME_LIMIT_S = 1800.0  # the server's default compute timeout (app/settings.py reads it from here)
CEILING_S = DEFAULT_TIME_LIMIT_S * CEILING_SHARE


def ceiling_for(time_limit_s: float | None) -> float:
    """The ceiling under a caller's time limit (None: the server's default compute timeout)."""
    return (DEFAULT_TIME_LIMIT_S if time_limit_s is None else time_limit_s) * CEILING_SHARE


@dataclass(frozen=True)
class Budget:
    """`time_budget_s` as the request set it (None: every candidate, within the ceiling)."""

    time_budget_s: float | None = None
    ceiling_s: float = CEILING_S

    @property
    def limit_s(self) -> float:
        return self.time_budget_s if self.time_budget_s is not None else self.ceiling_s

    def skip_reason(self, elapsed_s: float, expected_s: float) -> str | None:
        """Why a candidate expected to take `expected_s` must not start `elapsed_s` into the computation, or
        None when it may."""
        if elapsed_s + expected_s <= self.limit_s:
            return None
        if self.time_budget_s is not None:
            return f"expected {expected_s:.0f} s, over the time budget of {self.time_budget_s:g} s"
        return f"expected {expected_s:.0f} s, past the {self.ceiling_s:g} s ceiling that protects the server"

    def describe(self) -> dict[str, Any]:
        """What the vector's metrics record about the budget."""
        if self.time_budget_s is not None:
            return {"rule": "time_budget_s", "seconds": self.time_budget_s}
        return {"rule": "every candidate, within the ceiling", "ceiling_s": self.ceiling_s}
