"""Prompts rendered and tokenized off the event loop (a 1 MB prompt takes one to two seconds)."""

from __future__ import annotations

import asyncio
import copy
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from app.error_codes import ApiErrors
from steering.wire.protocol import ChatMessage

T = TypeVar("T")
TOKENIZING_THREADS = 2  # prompts rendered and tokenized at once, each thread with its own tokenizer


class PromptTokenizer:
    """Each thread tokenizes on a copy of the tokenizer of its own: a Rust tokenizer refuses two threads at
    once, and the generation thread uses the model's."""

    def __init__(self, tokenizer: Any, threads: int = TOKENIZING_THREADS) -> None:
        # The copies are made here, at start-up: copying a Rust tokenizer holds the GIL for its whole length
        # (about 0.1 s for the default model's), which on a thread's first request would stall the event loop.
        self._copies: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for _ in range(threads):
            self._copies.put(copy.deepcopy(tokenizer))
        self._threads = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tokenize")
        self._local = threading.local()

    async def ids(self, prompt: str | None, messages: Sequence[ChatMessage] | None) -> list[int]:
        """The chat rendered (when `messages`, else the prompt), then its token ids."""
        return await asyncio.get_running_loop().run_in_executor(self._threads, self._ids, prompt, messages)

    async def run(self, work: Callable[[Any], T]) -> T:
        """`work(tokenizer)` on a tokenizing thread, with that thread's copy."""
        return await asyncio.get_running_loop().run_in_executor(self._threads, lambda: work(self._tokenizer()))

    def _ids(self, prompt: str | None, messages: Sequence[ChatMessage] | None) -> list[int]:
        text = self._render_chat(messages) if messages is not None else prompt or ""
        return list(self._tokenizer()(text)["input_ids"])

    def _tokenizer(self) -> Any:
        if not hasattr(self._local, "tokenizer"):
            self._local.tokenizer = self._copies.get_nowait()  # one per pool thread, so never empty here
        return self._local.tokenizer

    def _render_chat(self, messages: Sequence[ChatMessage]) -> str:
        tokenizer = self._tokenizer()
        if not getattr(tokenizer, "chat_template", None):
            raise ApiErrors.NO_CHAT_TEMPLATE()
        return tokenizer.apply_chat_template(
            [m.model_dump() for m in messages], add_generation_prompt=True, tokenize=False
        )
