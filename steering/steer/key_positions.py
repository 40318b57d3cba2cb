"""Moving cached keys to later positions, by the rotation the model itself applies.

With rotary position embeddings the key a token has at position p is R(p)·k, R(p) a rotation, so the same key at
p + a is R(a)·R(p)·k: a KV prefix (`steering.steer.prefix`) moves `a` positions later by one rotation per layer.
Models differ in how they rotate: which dimensions pair up, partial rotary, scaled frequencies (YaRN, Llama 3),
other frequencies on sliding-window layers (Gemma 3), layers that do not rotate (NoPE), ALiBi's no rotation at all.
Rather than encode each, R(a) is read off the model: a batch of single tokens, each alone at position 0 and at
position a (a lone token's hidden states do not depend on where it sits, only its keys' rotation does), gives
each layer's keys before and after the move, and the rotation between them is the orthogonal Procrustes
solution. A model whose keys carry their position in their content (learned position embeddings: GPT-2) does not
fit a rotation, and `KeyShiftError` says so. In half precision the model's own rotation rounds, the more the farther
it moves (the default model in bfloat16 puts a text's keys at position 1500 40 % of their spread away from float32's);
the rotation read off it is that rounded one, so keys it moves are as near the float32 ones as the model's own.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch
from torch import Tensor
from transformers import DynamicCache

from steering.model.loading import LoadedModel

PROBE_SEED = 0
# How far the probe keys moved by the fitted rotation may miss the measured ones (relative), by the model's dtype:
# float32 fits to about 1e-6; half precision rounds each key to about 0.4 %.
FIT_TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-6}
HALF_FIT_TOLERANCE = 3e-2
# The probe keys must span every key direction, or the rotation is unknown along the ones they miss.
MIN_SPAN = 1e-6


class KeyShiftError(ValueError):
    """This model's keys cannot be moved to other positions by a rotation."""


class KeyShifter:
    """Each layer's rotation R(offset), measured once per offset (the last `cache_size` kept), and keys moved by it."""

    def __init__(self, lm: LoadedModel, cache_size: int = 32) -> None:
        self.lm, self.cache_size = lm, cache_size
        self._rotations: OrderedDict[int, Tensor] = OrderedDict()
        self._guard = threading.Lock()

    def shift(self, keys: Tensor, offset: int) -> Tensor:
        """`keys` [layers, kv_heads, tokens, head_dim], as if each sat `offset` positions later (float32)."""
        if offset == 0:
            return keys.float()
        rotation = self.rotation(offset)
        return keys.float() @ rotation[:, None].to(keys.device)

    def rotation(self, offset: int) -> Tensor:
        """[layers, head_dim, head_dim] float32 on the CPU: row-vector keys times it move `offset` positions on."""
        with self._guard:
            if offset in self._rotations:
                self._rotations.move_to_end(offset)
                return self._rotations[offset]
        rotation = self._measure(offset)
        with self._guard:
            self._rotations[offset] = rotation
            while len(self._rotations) > self.cache_size:
                self._rotations.popitem(last=False)
        return rotation

    def _measure(self, offset: int) -> Tensor:
        window = self.lm.context_window
        if offset < 0 or (window is not None and offset >= window):
            raise KeyShiftError(f"position {offset} is outside this model's {window} positions")
        head_dim = self.lm.arch.head_dim
        vocab = self.lm.model.get_input_embeddings().num_embeddings
        generator = torch.Generator().manual_seed(PROBE_SEED)
        tokens = torch.randperm(vocab, generator=generator)[: 4 * head_dim][:, None].to(self.lm.device)
        before, after = self._probe_keys(tokens, 0), self._probe_keys(tokens, offset)
        tolerance = FIT_TOLERANCE.get(self.lm.dtype, HALF_FIT_TOLERANCE)
        rotations = []
        for layer, (start, moved) in enumerate(zip(before, after, strict=True)):
            # float64: a few directions carry most of a deep layer's key norm, and X^T Y squares that spread
            start, moved = start.reshape(-1, head_dim).double(), moved.reshape(-1, head_dim).double()
            spread = torch.linalg.svdvals(start)
            if spread[-1] <= MIN_SPAN * spread[0]:
                raise KeyShiftError(f"layer {layer}'s keys span fewer than {head_dim} directions: no rotation fits")
            left, _, right = torch.linalg.svd(start.T @ moved)
            rotation = left @ right
            miss = float((start @ rotation - moved).norm() / moved.norm().clamp_min(1e-12))
            if miss > tolerance:
                raise KeyShiftError(
                    f"layer {layer}'s keys change with their position beyond a rotation (a {miss:.0%} misfit): this "
                    "model carries positions in its keys' content (learned position embeddings), so a KV prefix "
                    "cannot be moved"
                )
            rotations.append(rotation.float())
        return torch.stack(rotations).cpu()

    def _probe_keys(self, tokens: Tensor, position: int) -> list[Tensor]:
        """Each layer's keys [tokens, kv_heads, 1, head_dim] (float32) of each token alone at `position`."""
        cache = DynamicCache()
        positions = torch.full_like(tokens, position)
        with self.lm.lock, torch.no_grad():
            self.lm.model(
                input_ids=tokens, position_ids=positions, **self.lm.arch.cache_argument(cache), use_cache=True
            )
        return [layer.keys.float() for layer in cache.layers]
