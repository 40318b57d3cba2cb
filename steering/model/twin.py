"""A second module tree over the same weights, so generation and vector computation never share hooks.

Steering hooks are registered on modules. A computation paused in the middle of a pass (see
`steering.model.lock`) keeps its hooks attached; generation on the same modules would run through them.
The twin is a deep copy of the model's modules in which every parameter and buffer is the original
tensor: no weight is copied, and hooks on one tree are invisible to the other. Hooks are not copied.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import replace

from steering.model.arch import resolve_architecture
from steering.model.loading import LoadedModel


def twin(lm: LoadedModel) -> LoadedModel:
    """The same model (weights, tokenizer, fingerprint, lock) on its own module tree."""
    shared: dict[int, object] = {id(t): t for t in itertools.chain(lm.model.parameters(), lm.model.buffers())}
    shared[id(lm.lock)] = lm.lock  # the lock's own pause hooks may be on the original's layers
    model = copy.deepcopy(lm.model, memo=shared)
    for module in model.modules():
        for hooks in (module._forward_hooks, module._forward_pre_hooks, module._backward_hooks):
            hooks.clear()
    return replace(lm, model=model, arch=resolve_architecture(model))
