"""Generation without a KV cache, the reference the engine's cached decode loop is held to: every step runs
each row's whole sequence again, steered from its first position, and samples with the engine's own step."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from steering.generation.rows import GenerationRequest, GenerationResult, RowState, sample_step
from steering.generation.transformers.engine import Engine
from steering.generation.transformers.tokens import left_pad, positions_from_mask
from steering.steer.inject import BatchSteering, maybe_attached


def generate_without_cache(engine: Engine, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
    lm, pad = engine.lm, engine.pad_id
    started = time.perf_counter()
    rows = [RowState(r, lm.tokenizer, engine.eos_ids) for r in requests]
    ids, mask = left_pad([r.prompt_ids for r in requests], pad, lm.device)
    steering = BatchSteering.build([r.steering for r in requests], lm.arch, ids.shape[1], lm.device, lm.dtype)
    with maybe_attached(steering, lm.arch), torch.inference_mode():
        while live := [i for i, row in enumerate(rows) if row.finish is None]:
            out = lm.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions_from_mask(mask),
                use_cache=False,
                logits_to_keep=1,
            )
            chosen, _ = sample_step(out.logits[live, -1], [rows[i] for i in live], pad)
            tokens = torch.full((len(rows), 1), pad, device=lm.device)
            tokens[live, 0] = torch.tensor(chosen, device=lm.device)
            ids, mask = torch.cat([ids, tokens], dim=1), torch.cat([mask, torch.ones_like(tokens)], dim=1)
    finished = time.perf_counter()
    return [row.result(started, finished) for row in rows]
