"""What the transformers engine knows of a loaded model's tokens: the pad id, the tokens that end a row,
encoding a prompt, and left-padded batches with their positions."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from steering.model.loading import LoadedModel


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


class ModelTokens:
    """A loaded model with its pad id and the tokens that end a row (the model's and the tokenizer's)."""

    def __init__(self, lm: LoadedModel) -> None:
        self.lm = lm
        tokenizer = lm.tokenizer
        self.pad_id: int = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        eos = lm.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        self.eos_ids: set[int] = eos_ids

    def encode(self, text: str) -> list[int]:
        return list(self.lm.tokenizer(text)["input_ids"])
