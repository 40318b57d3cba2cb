"""Turn an API generate request into an engine request, and run it through the batcher."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from app.batcher import Batcher, Pending
from app.errors import ApiError
from app.settings import Settings
from app.tasks import TaskService
from steering.engine import GenerationRequest, GenerationResult
from steering.inject import SteeringTerm
from steering.model import LoadedModel
from steering.protocol import ChatMessage, SteeringEntry
from steering.templates import DEFAULT_TEMPLATE, render_query, stop_strings


@dataclass
class Sampling:
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: list[str] | str | None


class GenerationService:
    def __init__(self, lm: LoadedModel, tasks: TaskService, batcher: Batcher, settings: Settings) -> None:
        self.lm, self.tasks, self.batcher, self.settings = lm, tasks, batcher, settings

    def render_chat(self, messages: Sequence[ChatMessage]) -> str:
        tokenizer = self.lm.tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise ApiError(422, "no_chat_template", "this model has no chat template: send `prompt` instead")
        return tokenizer.apply_chat_template(
            [m.model_dump() for m in messages], add_generation_prompt=True, tokenize=False
        )

    async def prepare(
        self,
        *,
        prompt: str | None,
        input_text: str | None,
        messages: Sequence[ChatMessage] | None,
        steering: Sequence[SteeringEntry],
        sampling: Sampling,
        owner: str | None,
    ) -> GenerationRequest:
        if sampling.max_new_tokens > self.settings.max_new_tokens:
            raise ApiError(
                422, "max_new_tokens_too_large", f"max_new_tokens is limited to {self.settings.max_new_tokens}"
            )
        terms = await self.tasks.steering_terms(steering, owner)
        stop = [sampling.stop] if isinstance(sampling.stop, str) else list(sampling.stop or [])
        if len(stop) > 8 or any(not s for s in stop):
            raise ApiError(422, "invalid_stop", "give at most 8 non-empty stop strings")
        if messages is not None:
            text = self.render_chat(messages)
        elif input_text is not None:
            template = terms[0].vector.template if terms else DEFAULT_TEMPLATE
            text = render_query(template, input_text)
            if sampling.stop is None:
                stop = stop_strings(template)
        else:
            text = prompt or ""
        ids = list(self.lm.tokenizer(text)["input_ids"])
        if not ids:
            raise ApiError(422, "empty_prompt", "the prompt is empty")
        if len(ids) > self.settings.max_prompt_tokens:
            raise ApiError(
                422,
                "prompt_too_long",
                f"the prompt has {len(ids)} tokens; the limit is {self.settings.max_prompt_tokens}",
            )
        return GenerationRequest(
            prompt_ids=ids,
            steering=tuple(terms),
            max_new_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=sampling.seed,
            stop=stop,
        )

    async def complete(self, request: GenerationRequest) -> GenerationResult:
        return await self.batcher.result(self.batcher.submit(request))

    def start_stream(self, request: GenerationRequest) -> Pending:
        return self.batcher.submit(request, stream=True)

    @staticmethod
    async def pieces(pending: Pending) -> AsyncIterator[str]:
        """Text deltas until the row ends; leaving early (client gone) cancels the row."""
        try:
            while (piece := await pending.deltas.get()) is not None:
                yield piece
        finally:
            pending.request.cancel.set()


def applied(terms: Sequence[SteeringTerm], entries: Sequence[SteeringEntry]) -> list[SteeringEntry]:
    """The steering as it was applied: defaults filled in."""
    return [
        SteeringEntry(task=e.task, strength=t.strength, layers=list(t.resolved_layers()))
        for e, t in zip(entries, terms, strict=True)
    ]
