"""Static batched generation where every row carries its own steering plan.

One left-padded prefill, then one token per step with the KV cache (or, for checking, without it),
until the batch's longest row ends. Each row has its own sampling settings and random generator
(`steering.generation.rows`), so a row's tokens do not depend on which other rows share its batch. A per-step
callback streams text deltas. `steering.generation.transformers.scheduler` runs rows that come and go instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from transformers import DynamicCache

from steering.generation.rows import GenerationRequest, GenerationResult, RowDelta, RowState, sample_step
from steering.model.loading import LoadedModel
from steering.steer.inject import BatchSteering, maybe_attached


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[Tensor, Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        if seq:
            ids[i, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[i, width - len(seq) :] = 1
    return ids.to(device), mask.to(device)


def positions_from_mask(mask: Tensor) -> Tensor:
    """Padding gets position 0, real tokens count from 0, as transformers does during generation."""
    return (mask.cumsum(-1) - 1).clamp_min(0)


class Engine:
    """Generates for many requests at once on one loaded model.

    The model's `lock` is held for a whole batch, ahead of waiting vector computations: hooks are
    module-global, so nothing else may run a forward pass on the model while a steered batch is in flight.
    """

    def __init__(self, lm: LoadedModel) -> None:
        self.lm = lm
        tokenizer = lm.tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        eos = lm.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        self.eos_ids = eos_ids

    def encode(self, text: str) -> list[int]:
        return list(self.lm.tokenizer(text)["input_ids"])

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        use_cache: bool = True,
        on_step: Callable[[list[RowDelta]], None] | None = None,
    ) -> list[GenerationResult]:
        if not requests:
            return []
        if any(not r.prompt_ids for r in requests):
            raise ValueError("every request needs at least one prompt token")
        with self.lm.lock.first():
            return self._generate(requests, use_cache, on_step)

    def _generate(self, requests, use_cache, on_step) -> list[GenerationResult]:
        lm, device = self.lm, self.lm.device
        started = time.perf_counter()
        rows = [RowState(r, lm.tokenizer, self.eos_ids) for r in requests]
        ids, mask = left_pad([r.prompt_ids for r in requests], self.pad_id, device)
        prompt_len = ids.shape[1]
        positions = positions_from_mask(mask)
        steering = BatchSteering.build([r.steering for r in requests], lm.arch, prompt_len, device, lm.dtype)
        cache = DynamicCache(config=lm.model.config) if use_cache else None
        max_steps = max(r.token_limit() for r in requests)
        with maybe_attached(steering, lm.arch), torch.inference_mode():
            for step in range(max_steps):
                incremental = use_cache and step > 0
                offset = ids.shape[1] - 1 if incremental else 0
                if steering is not None:
                    steering.offset = offset
                out = lm.model(
                    input_ids=ids[:, offset:],
                    attention_mask=mask,
                    position_ids=positions[:, offset:],
                    past_key_values=cache,
                    use_cache=use_cache,
                    logits_to_keep=1,
                )
                live = [i for i, row in enumerate(rows) if row.finish is None]
                chosen, changes = sample_step(out.logits[live, -1], [rows[i] for i in live], self.pad_id)
                tokens = [self.pad_id] * len(rows)
                deltas = []
                for i, token, delta in zip(live, chosen, changes, strict=True):
                    tokens[i] = token
                    if delta is not None:
                        delta.row = i
                        deltas.append(delta)
                if on_step is not None and deltas:
                    on_step(deltas)
                if all(r.finish is not None for r in rows):
                    break
                ids = torch.cat([ids, torch.tensor(tokens, device=device)[:, None]], dim=1)
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                positions = torch.cat([positions, positions[:, -1:] + 1], dim=1)
        finished = time.perf_counter()
        return [row.result(started, finished) for row in rows]
