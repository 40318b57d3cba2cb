"""Turn an API generate request into an engine request, and run it on the generation backend."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from fastapi import Request
from sse_starlette import EventSourceResponse

from app.error_codes import ApiErrors
from app.errors import request_id
from app.settings import Settings
from app.streaming import sse_response
from app.tasks import TaskService
from app.tokenizing import PromptTokenizer
from steering.generation.backend import GenerationBackend, Submission
from steering.generation.rows import GenerationRequest, GenerationResult
from steering.model.loading import LoadedModel
from steering.steer.inject import SteeringTerm
from steering.tasks.answer_end import AnswerEnd, template_end
from steering.tasks.templates import DEFAULT_TEMPLATE, render_query
from steering.wire.protocol import ChatMessage, SteeringEntry


@dataclass
class Prepared:
    request: GenerationRequest  # what the engine runs (KV-prefix tasks composed into one prefix)
    terms: list[SteeringTerm]  # one per steering entry, as the entries resolved


@dataclass
class Sampling:
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: list[str] | str | None
    # Unset `stop` with tasks named: end where the tasks' answers end (always so for `input` requests).
    task_answer_end: bool = False


class GenerationService:
    def __init__(self, lm: LoadedModel, tasks: TaskService, backend: GenerationBackend, settings: Settings) -> None:
        self.lm, self.tasks, self.backend, self.settings = lm, tasks, backend, settings
        self._prompts = PromptTokenizer(lm.tokenizer)

    async def prepare(
        self,
        *,
        prompt: str | None,
        input_text: str | None,
        messages: Sequence[ChatMessage] | None,
        steering: Sequence[SteeringEntry],
        sampling: Sampling,
        owner: str | None,
    ) -> Prepared:
        self.tasks.bounds.new_tokens(sampling.max_new_tokens)
        terms = await self.tasks.steering_terms(steering, owner)
        stop = [sampling.stop] if isinstance(sampling.stop, str) else list(sampling.stop or [])
        answer_end = None
        if sampling.stop is None and (input_text is not None or (terms and sampling.task_answer_end)):
            answer_end = tasks_answer_end(terms)
        text = prompt
        if messages is None and input_text is not None:
            template = terms[0].vector.template if terms else DEFAULT_TEMPLATE
            text = render_query(template, input_text)
        ids = await self._prompts.ids(text, messages)
        if not ids:
            raise ApiErrors.EMPTY_PROMPT()
        if len(ids) > self.settings.max_prompt_tokens:
            raise ApiErrors.PROMPT_TOO_LONG(tokens=len(ids), limit=self.settings.max_prompt_tokens)
        window = self.lm.context_window
        # A task's KV prefix takes positions before the prompt's.
        tokens = len(ids) + sum(t.vector.prefix_tokens for t in terms if t.strength != 0.0)
        if window is not None and tokens + sampling.max_new_tokens > window:
            raise ApiErrors.CONTEXT_LENGTH_EXCEEDED(tokens=tokens, new_tokens=sampling.max_new_tokens, window=window)
        request = GenerationRequest(
            prompt_ids=ids,
            steering=tuple(await self.tasks.engine_plan(terms, steering)),
            max_new_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=sampling.seed,
            stop=stop,
            answer_end=answer_end,
        )
        return Prepared(request, terms)

    async def complete(self, request: GenerationRequest, client: Request | None = None) -> GenerationResult:
        """Wait for a non-streaming request; if `client` hangs up first, its row is cancelled (no work is left)."""
        submission = self.backend.submit(request)
        if client is None:
            return await self.backend.result(submission)
        result = asyncio.ensure_future(self.backend.result(submission))
        gone = asyncio.ensure_future(_disconnected(client))
        try:
            await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not result.done():
                result.cancel()  # sets the row's cancel flag
        if not result.done() or result.cancelled():
            raise ApiErrors.CLIENT_CLOSED_REQUEST()
        return result.result()

    def start_stream(self, request: GenerationRequest) -> Submission:
        return self.backend.submit(request, stream=True)

    @staticmethod
    async def pieces(submission: Submission) -> AsyncIterator[str]:
        """Text deltas until the row ends; leaving early (client gone) cancels the row."""
        try:
            while (piece := await submission.deltas.get()) is not None:
                yield piece
        finally:
            submission.request.cancel.set()

    def sse(self, events: AsyncIterator[dict], http: Request, *, openai: bool = False) -> EventSourceResponse:
        """The streaming response of every endpoint (OpenAI streams end with `[DONE]` and unnamed events)."""
        return sse_response(
            events,
            send_timeout_s=self.settings.stream_send_timeout_s,
            request_id=request_id(http),
            error_event_name=None if openai else "error",
            done="[DONE]" if openai else None,
        )


def tasks_answer_end(terms: Sequence[SteeringTerm]) -> AnswerEnd:
    """Where an answer steered by these tasks ends: each task's learned rule (its template's for vectors
    without one), combined; with no task, the default template's."""
    if not terms:
        return template_end(DEFAULT_TEMPLATE)
    return AnswerEnd.combine([t.vector.answer_end or template_end(t.vector.template) for t in terms])


async def _disconnected(client: Request) -> None:
    """Return once the client has gone (the body was read already: the next ASGI message is the disconnect)."""
    while (await client.receive())["type"] != "http.disconnect":
        pass


def applied(terms: Sequence[SteeringTerm], entries: Sequence[SteeringEntry]) -> list[SteeringEntry]:
    """The steering as it was applied: defaults filled in."""
    return [
        SteeringEntry(task=e.task, strength=t.strength, layers=list(t.resolved_layers()))
        for e, t in zip(entries, terms, strict=True)
    ]
