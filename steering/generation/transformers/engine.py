"""The transformers engine on one loaded model, for callers that want whole batches: methods, evaluation,
benchmarks.

`Engine.generate` runs its requests as one static batch on the engine's one decode loop
(`steering.generation.transformers.scheduler`): prefilled together, decoded until the last row ends, nobody
joining. Each row has its own sampling settings and random generator (`steering.generation.rows`), so a row's
tokens do not depend on which other rows share its batch.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

from steering.generation.rows import GenerationRequest, GenerationResult
from steering.generation.transformers.scheduler import RowUpdate, Scheduler
from steering.generation.transformers.tokens import ModelTokens


class Engine(ModelTokens):
    """Generates for many requests at once on one loaded model.

    The model's `lock` is held for a whole batch, ahead of waiting vector computations: hooks are
    module-global, so nothing else may run a forward pass on the model while a steered batch is in flight.
    """

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        on_step: Callable[[list[RowUpdate]], None] | None = None,
    ) -> list[GenerationResult]:
        """Every request's result, in order; `on_step` gets each step's updates (keys are the requests' indices)."""
        scheduler = Scheduler.static(self)
        for key, request in enumerate(requests):
            scheduler.add(key, request)
        results: dict[Hashable, GenerationResult] = {}
        with self.lm.lock.first():
            while len(scheduler):
                updates = scheduler.step()
                if on_step is not None and updates:
                    on_step(updates)
                results.update((u.key, u.result) for u in updates if u.result is not None)
        return [results[key] for key in range(len(requests))]
