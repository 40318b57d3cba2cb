"""The reference of `make bench-load`: plain transformers `generate`, no steering, no server, one request at a
time in arrival order. Each request of the trace is run back to back to measure its service time; the queue a
single-request server would have built is then computed from the arrival times (FIFO: a request starts when
it has arrived and the previous one has finished), so the reference costs only its own work, never idle time."""

from __future__ import annotations

import time

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from scripts.bench_load_client import Outcome
from scripts.bench_load_trace import Request
from steering.model.loading import LoadedModel


class _FirstCall(LogitsProcessor):
    """Records when generate asks for its first token's scores (the prefill is done)."""

    def __init__(self) -> None:
        self.at: float | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.at is None:
            self.at = time.perf_counter()
        return scores


def service(lm: LoadedModel, request: Request) -> tuple[float, float, int]:
    """(seconds to the answer, seconds to the first token, tokens) of one request run alone, unsteered."""
    tokenizer = lm.tokenizer
    ids = tokenizer(request.body["prompt"], return_tensors="pt")["input_ids"].to(lm.device)
    stop = request.body.get("stop") or None
    first = _FirstCall()
    started = time.perf_counter()
    with lm.lock.first(), torch.inference_mode():
        out = lm.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=request.body["max_new_tokens"],
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            stop_strings=stop,
            tokenizer=tokenizer if stop else None,
            logits_processor=LogitsProcessorList([first]),
        )
    total = time.perf_counter() - started
    return total, (first.at or started + total) - started, int(out.shape[1] - ids.shape[1])


def run_reference(lm: LoadedModel, trace: list[Request]) -> tuple[list[Outcome], float]:
    outcomes: list[Outcome] = []
    free_at = 0.0
    for request in trace:
        total, first, tokens = service(lm, request)
        start = max(request.at, free_at)
        free_at = start + total
        ttft = start + first - request.at
        outcomes.append(Outcome(request.kind, request.stream, False, 200, free_at - request.at, ttft, tokens))
    return outcomes, free_at - trace[0].at
