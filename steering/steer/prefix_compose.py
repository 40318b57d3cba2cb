"""Several KV-prefix tasks in one request, made one prefix the engines serve as they serve any.

A KV prefix (`steering.steer.prefix`) is a few-shot prompt's keys and values, trained, and the prompt follows it at
the positions it was trained with. Composed, each part ends where the prompt begins, as it did in training: every
part's keys are moved (`steering.steer.key_positions`) so that its last column sits just before the prompt, and
the prompt's tokens attend to all of them, as parallel context windows do (Ratner et al., 2023, arXiv 2212.10947).
No part is nearer the prompt than another, so the order of the entries does not matter. The `sequential` layout
(each part after the ones before it, as concatenated few-shot prompts) is kept for comparison: the part nearest the
prompt dominates it, and on pairs of tasks with inputs of different kinds each task answers its own inputs less
often than in parallel (docs/RESULTS.md, issue 22 round 11). Each part's values are scaled by its own strength, so
the composed prefix is applied at strength 1. Activation terms are left as they are.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal, get_args

import torch

from steering.model.loading import LoadedModel
from steering.steer.inject import SteeringTerm
from steering.steer.key_positions import KeyShifter, KeyShiftError
from steering.steer.prefix import PrefixError, carries_prefix, prefix_term
from steering.tasks.answer_end import AnswerEnd, template_end
from steering.vectors.modes import MAX_PREFIX_TOKENS
from steering.vectors.task_vector import TaskVector

Layout = Literal["parallel", "sequential"]
LAYOUTS: tuple[Layout, ...] = get_args(Layout)
Parts = tuple[tuple[int, float], ...]  # each part's vector (by identity) and strength


class PrefixComposer:
    """Composes the KV-prefix terms of a plan; the last `cache_size` composed prefixes are kept, so a repeated
    combination is the same vector object (engines that cache vectors by identity keep theirs)."""

    def __init__(self, lm: LoadedModel, cache_size: int = 8, layout: Layout = "parallel") -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
        self.lm, self.shifter, self.cache_size, self.layout = lm, KeyShifter(lm), cache_size, layout
        self._composed: OrderedDict[Parts, tuple[list[weakref.ref[TaskVector]], TaskVector]] = OrderedDict()
        self._guard = threading.Lock()

    @staticmethod
    def needed(terms: Sequence[SteeringTerm]) -> bool:
        return sum(carries_prefix(t) for t in terms) > 1

    def compose(self, terms: Sequence[SteeringTerm]) -> list[SteeringTerm]:
        """`terms` with their KV-prefix terms replaced by one, where the first of them was; `PrefixError` for
        prefixes that cannot compose on this model (or that together pass its limit)."""
        places = [i for i, t in enumerate(terms) if carries_prefix(t)]
        if len(places) < 2:
            return list(terms)
        parts = [terms[i] for i in places]
        for part in parts:
            prefix_term([part], self.lm.arch)  # each one alone fits the model and covers every layer
        composed = SteeringTerm(self._composed_vector(parts), 1.0)
        rest = [t for i, t in enumerate(terms) if i not in places[1:]]
        rest[places[0]] = composed
        return rest

    def _composed_vector(self, parts: list[SteeringTerm]) -> TaskVector:
        key: Parts = tuple((id(p.vector), float(p.strength)) for p in parts)
        with self._guard:
            held = self._composed.get(key)
            if held is not None and all(ref() is p.vector for ref, p in zip(held[0], parts, strict=True)):
                self._composed.move_to_end(key)
                return held[1]
        vector = self._build(parts)
        with self._guard:
            self._composed[key] = ([weakref.ref(p.vector) for p in parts], vector)
            while len(self._composed) > self.cache_size:
                self._composed.popitem(last=False)
        return vector

    def _build(self, parts: list[SteeringTerm]) -> TaskVector:
        # The prompt follows the composed prefix's columns, all of them, on either engine.
        total = sum(p.vector.prefix_tokens for p in parts)
        limit = min(MAX_PREFIX_TOKENS, self.lm.context_window or MAX_PREFIX_TOKENS)
        if total > limit:
            raise PrefixError(f"the KV prefixes take {total} positions together; at most {limit} on this model")
        keys, values, before = [], [], 0
        for part in parts:
            tokens = part.vector.prefix_tokens
            offset = total - tokens if self.layout == "parallel" else before
            try:
                keys.append(self.shifter.shift(part.vector.tensors["prefix_keys"], offset))
            except KeyShiftError as exc:
                raise PrefixError(f"KV prefixes cannot be composed on this model: {exc}") from None
            values.append(part.vector.tensors["prefix_values"].float() * float(part.strength))
            before += tokens
        first = parts[0].vector
        return TaskVector(
            method=first.method,
            mode=first.mode,
            tensors={"prefix_keys": torch.cat(keys, dim=2), "prefix_values": torch.cat(values, dim=2)},
            layers=list(range(self.lm.arch.num_layers)),
            default_strength=1.0,
            fingerprint=first.fingerprint,
            template=first.template,
            num_demonstrations=sum(p.vector.num_demonstrations for p in parts),
            metrics={
                "composed_of": [{"tokens": p.vector.prefix_tokens, "strength": float(p.strength)} for p in parts],
                "layout": self.layout,
            },
            answer_end=AnswerEnd.combine([p.vector.answer_end or template_end(p.vector.template) for p in parts]),
        )
