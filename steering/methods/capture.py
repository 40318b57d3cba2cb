"""Forward passes that methods and evaluation share: read activations, score the next token.

Every function batches its inputs, takes the model's lock per batch (so a long computation lets
generation requests in between batches) and works under `inference_mode`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import DynamicCache

from steering.generation.transformers.tokens import left_pad, positions_from_mask
from steering.methods.prompt_length import check_prompt_lengths
from steering.model.loading import LoadedModel
from steering.steer.inject import BatchSteering, SteeringTerm, maybe_attached
from steering.steer.prefix import prefix_term
from steering.vectors.task_vector import ActivationScale

Plan = Sequence[SteeringTerm]


def encode(lm: LoadedModel, texts: Sequence[str]) -> list[list[int]]:
    """Every method's prompts pass here: one longer than the model's context window is refused (`PromptTooLong`)."""
    ids = [list(ids) for ids in lm.tokenizer(list(texts))["input_ids"]]
    check_prompt_lengths(lm, ids)
    return ids


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _pad_id(lm: LoadedModel) -> int:
    return lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0


@contextmanager
def _recording(
    lm: LoadedModel, store: dict[str, list[Tensor]], *, heads: bool, residual: bool = True, width: int | None = None
):
    """Record every decoder layer's output (`residual`) and every head's output (`heads`, the out-projection's
    input) at the last position, or at the last `width` positions."""
    at = -1 if width is None else slice(-width, None)
    handles = []

    def on_layer(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        store["residual"].append(hidden[:, at].float())

    def on_heads(module, args):
        store["heads"].append(args[0][:, at].float())

    try:
        if residual:
            for layer in lm.arch.layers:
                handles.append(layer.register_forward_hook(on_layer))
        if heads:
            for out_proj in lm.arch.attn_out:
                handles.append(out_proj.register_forward_pre_hook(on_heads))
        yield
    finally:
        for handle in handles:
            handle.remove()


def last_token_activations(
    lm: LoadedModel, texts: Sequence[str], *, heads: bool = False, batch_size: int = 16
) -> dict[str, Tensor]:
    """`residual` [N, layers, hidden] at the last token; with `heads`, also `heads` [N, layers, heads, head_dim]."""
    arch = lm.arch
    token_ids = encode(lm, texts)
    out: dict[str, list[Tensor]] = {"residual": [], "heads": []}
    for part in _chunks(len(texts), batch_size):
        ids, mask = left_pad(token_ids[part], _pad_id(lm), lm.device)
        store: dict[str, list[Tensor]] = {"residual": [], "heads": []}
        with lm.lock, torch.inference_mode(), _recording(lm, store, heads=heads):
            lm.model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask), logits_to_keep=1)
        out["residual"].append(torch.stack(store["residual"], dim=1).cpu())
        if heads:
            per_layer = torch.stack(store["heads"], dim=1)
            out["heads"].append(per_layer.reshape(*per_layer.shape[:2], arch.num_heads, arch.head_dim).cpu())
    result = {"residual": torch.cat(out["residual"])}
    if heads:
        result["heads"] = torch.cat(out["heads"])
    return result


# A short, plain text: the activations it raises are the model's ordinary ones.
NEUTRAL_TEXT = "The library opens at nine in the morning, and the reading room is quiet until noon."


def activation_scale(lm: LoadedModel, text: str = NEUTRAL_TEXT) -> ActivationScale:
    """Each layer's ordinary activation norms on `text`: the median over its tokens (a first token's outsized
    state aside) of the residual stream's norm, and of each head's output norm, its largest head's."""
    arch = lm.arch
    ids = encode(lm, [text])[0]
    store: dict[str, list[Tensor]] = {"residual": [], "heads": []}
    with lm.lock, torch.inference_mode(), _recording(lm, store, heads=True, width=len(ids)):
        lm.model(input_ids=torch.tensor([ids], device=lm.device), logits_to_keep=1)
    residual = torch.stack(store["residual"])[:, 0].norm(dim=-1)  # [layers, tokens]
    heads = torch.stack(store["heads"])[:, 0].reshape(arch.num_layers, len(ids), arch.num_heads, arch.head_dim)
    return ActivationScale(
        residual=residual.median(dim=-1).values.cpu(),
        heads=heads.norm(dim=-1).median(dim=1).values.amax(dim=-1).cpu(),
    )


@dataclass(frozen=True)
class HeadMeans:
    """Every head's mean output [layers, heads, head_dim] over a set of prompts."""

    last: Tensor  # at each prompt's last token
    answer: Tensor | None  # over the answer tokens after it (teacher forced), when answers were given


def head_means(
    lm: LoadedModel,
    prompts: Sequence[str],
    answers: Sequence[Sequence[int]] | None = None,
    *,
    batch_size: int = 16,
) -> HeadMeans:
    """Every head's mean output (the out-projection's input) at the last token of each prompt and, given each
    prompt's answer (token ids), over the answer's tokens, teacher forced in the same pass: at each answer token
    the model writes the next one, or the answer's end. Causal attention keeps the last prompt token's outputs
    what they are without the answer, so one pass reads both."""
    arch = lm.arch
    tails = [list(a) for a in answers] if answers is not None else [[] for _ in prompts]
    sequences = [ids + tail for ids, tail in zip(encode(lm, prompts), tails, strict=True)]
    check_prompt_lengths(lm, sequences)  # with the answers teacher forced after the prompts
    last_sum = torch.zeros(arch.num_layers, arch.num_heads * arch.head_dim)
    answer_sum = torch.zeros_like(last_sum)
    answer_count = 0
    for part in _chunks(len(sequences), batch_size):
        ids, mask = left_pad(sequences[part], _pad_id(lm), lm.device)
        lengths = [len(t) for t in tails[part]]
        width = max(lengths) + 1
        # Left padding aligns every sequence's end: a row's answer is its last len(answer) positions, and its last
        # prompt token the position before them.
        at_last = torch.tensor([[float(i == width - 1 - n) for i in range(width)] for n in lengths])
        in_answer = torch.tensor([[float(i >= width - n) for i in range(width)] for n in lengths])
        store: dict[str, list[Tensor]] = {"heads": []}
        with lm.lock, torch.inference_mode(), _recording(lm, store, heads=True, residual=False, width=width):
            lm.model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask), logits_to_keep=1)
        per_layer = torch.stack(store["heads"]).cpu()  # [layers, rows, width, heads * head_dim]
        last_sum += (per_layer * at_last[None, ..., None]).sum((1, 2))
        if answers is not None:
            answer_sum += (per_layer * in_answer[None, ..., None]).sum((1, 2))
            answer_count += sum(lengths)
    shape = (arch.num_layers, arch.num_heads, arch.head_dim)
    last = (last_sum / max(len(prompts), 1)).reshape(shape)
    if answers is None:
        return HeadMeans(last=last, answer=None)
    if answer_count == 0:
        raise ValueError("head_means needs at least one answer token when answers are given")
    return HeadMeans(last=last, answer=(answer_sum / answer_count).reshape(shape))


def next_token_logprobs(
    lm: LoadedModel,
    texts: Sequence[str],
    plans: Sequence[Plan] | None = None,
    *,
    batch_size: int = 32,
) -> Tensor:
    """Log-probabilities [N, vocab] of the token after each text, each row steered by its own plan (hooks only:
    a KV prefix needs the engine's cache, `Engine.generate`)."""
    if plans is not None and any(prefix_term(plan, lm.arch) is not None for plan in plans):
        raise ValueError("a KV prefix is applied by the generation engine, not by these passes")
    token_ids = encode(lm, texts)
    outputs = []
    for part in _chunks(len(texts), batch_size):
        ids, mask = left_pad(token_ids[part], _pad_id(lm), lm.device)
        row_plans = plans[part] if plans is not None else [()] * ids.shape[0]
        steering = BatchSteering.build(row_plans, lm.arch, ids.shape[1], lm.device, lm.dtype)
        with lm.lock, torch.inference_mode(), maybe_attached(steering, lm.arch):
            logits = lm.model(
                input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask), logits_to_keep=1
            ).logits[:, -1]
        outputs.append(torch.log_softmax(logits.float(), dim=-1).cpu())
    return torch.cat(outputs)


def _snapshot(cache: DynamicCache) -> list[dict[str, object]]:
    """Every cache layer's attributes: its key/value tensors and its bookkeeping.

    Sliding-window layers count the tokens they have seen (`cumulative_length`) apart from the keys they
    keep (at most window - 1); restoring only the tensors would leave that count one token further on
    every pass, and the next pass would build its attention mask for a longer cache than it holds.
    Dynamic layers replace their tensors and counters on update instead of writing into them, so a
    shallow copy of the attributes is a snapshot.
    """
    return [dict(vars(layer)) for layer in cache.layers]


def _restore(cache: DynamicCache, snapshot: list[dict[str, object]]) -> None:
    for layer, state in zip(cache.layers, snapshot, strict=True):
        vars(layer).clear()
        vars(layer).update(state)


class LastTokenRunner:
    """Runs the shared prefix of prompts once, then only their last token under many different edits.

    An edit at the last prompt token cannot change the prefix, so causal head scans and gate training
    re-run a single position per row instead of the whole prompt.
    """

    def __init__(
        self,
        lm: LoadedModel,
        texts: Sequence[str],
        repeats: int = 1,
        continuations: Sequence[Sequence[int]] | None = None,
    ) -> None:
        """`continuations`: tokens run after each prompt's last token in the same pass (an answer, teacher
        forced); rows are right-padded to the longest, and `logits_all` scores every position."""
        self.lm = lm
        token_ids = encode(lm, texts)
        if any(len(t) < 2 for t in token_ids):
            raise ValueError("every prompt needs at least two tokens")
        if continuations is not None:
            check_prompt_lengths(lm, [[*t, *c] for t, c in zip(token_ids, continuations, strict=True)])
        prefix_ids, mask = left_pad([t[:-1] for t in token_ids], _pad_id(lm), lm.device)
        self.prefix_len = prefix_ids.shape[1]
        self.cache = DynamicCache(config=lm.model.config)
        # no_grad, not inference_mode: gate training back-propagates through attention over this cache.
        with lm.lock, torch.no_grad():
            lm.model(
                input_ids=prefix_ids,
                attention_mask=mask,
                position_ids=positions_from_mask(mask),
                **self.lm.arch.cache_argument(self.cache),
                use_cache=True,
                logits_to_keep=1,
            )
        if repeats > 1:
            self.cache.batch_repeat_interleave(repeats)  # rows i*repeats ... (i+1)*repeats-1 share prompt i
            mask = mask.repeat_interleave(repeats, dim=0)
        self._prefix_state = _snapshot(self.cache)
        tails = [[t[-1], *(continuations[i] if continuations is not None else ())] for i, t in enumerate(token_ids)]
        width = max(len(t) for t in tails)
        pad = _pad_id(lm)
        tail_ids = torch.tensor([t + [pad] * (width - len(t)) for t in tails], device=lm.device)
        tail_mask = torch.tensor([[1] * len(t) + [0] * (width - len(t)) for t in tails], device=lm.device)
        self.last_ids = tail_ids.repeat_interleave(repeats, dim=0)
        tail_mask = tail_mask.repeat_interleave(repeats, dim=0).to(mask.dtype)
        self.mask = torch.cat([mask, tail_mask], dim=1)
        start = mask.sum(-1, keepdim=True)
        self.positions = start + torch.arange(width, device=lm.device)[None]
        self.rows = self.last_ids.shape[0]

    def logits(self, steering: BatchSteering | None, *, grad: bool = False) -> Tensor:
        """Logits [rows, vocab] at the last prompt token; the cache is reset to the prefix afterwards."""
        return self.logits_all(steering, grad=grad)[:, 0]

    def logits_all(self, steering: BatchSteering | None, *, grad: bool = False) -> Tensor:
        """Logits [rows, 1 + continuation, vocab] from the last prompt token on (edits act at the last prompt
        token); the cache is reset to the prefix afterwards."""
        if steering is not None:
            steering.prompt_len = self.prefix_len + 1
            steering.offset = self.prefix_len
        context: Callable = torch.enable_grad if grad else torch.inference_mode
        try:
            with self.lm.lock, context(), maybe_attached(steering, self.lm.arch):
                return self.lm.model(
                    input_ids=self.last_ids,
                    attention_mask=self.mask,
                    position_ids=self.positions,
                    **self.lm.arch.cache_argument(self.cache),
                    use_cache=True,
                ).logits.float()
        finally:
            _restore(self.cache, self._prefix_state)
