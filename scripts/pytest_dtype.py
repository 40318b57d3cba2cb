"""`pytest -p scripts.pytest_dtype`: models the tests load with dtype "auto" load in $STEER_TEST_DTYPE instead.

For device checks: on a GPU "auto" is bfloat16, and a test that fails there is run again in float32 to tell a
rounding-order difference from a fault.
"""

from __future__ import annotations

import os

import torch

from steering.model import loading

_pick_dtype = loading.pick_dtype


def _pick_dtype_from_env(requested: str, device: torch.device) -> torch.dtype:
    return _pick_dtype(os.environ.get("STEER_TEST_DTYPE", requested) if requested == "auto" else requested, device)


loading.pick_dtype = _pick_dtype_from_env
