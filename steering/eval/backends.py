"""Where the suite computes vectors and generates: in this process (`LocalBackend`) or through a server
(`RemoteBackend`, over `steering.client`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from steering.client import Client
from steering.eval.config import EvalConfig
from steering.wire.protocol import Demonstration, TaskInfo

if TYPE_CHECKING:
    from steering.model.loading import LoadedModel


@dataclass
class Prepared:
    """A computed vector, as either backend sees it: `handle` is a TaskVector (local) or a task id (remote)."""

    handle: Any
    method: str
    layers: list[int]
    strength: float
    compute_seconds: float
    dev_metrics: dict[str, Any]


@dataclass(frozen=True)
class Steer:
    handle: Any
    strength: float


StageFn = Callable[[str], None]


class Backend(Protocol):
    def info(self) -> dict[str, Any]: ...

    def prepare(
        self, name: str, demos: list[Demonstration], method: str, options: dict[str, Any], stage: StageFn
    ) -> Prepared: ...

    def complete(
        self, prompts: Sequence[str], steer: Steer | None, max_new_tokens: int, stop: Sequence[str]
    ) -> list[str]: ...

    def close(self) -> None: ...


def reported_metrics(metrics: dict[str, Any] | None) -> dict[str, Any]:
    """A vector's dev metrics without the scan tables and timings (those differ in shape or run to run), and with
    `auto`'s report when it has one: what it chose, why, and each candidate's held-out scores or why it was skipped."""
    metrics = metrics or {}
    kept = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool)) and k != "compute_seconds"}
    if isinstance(metrics.get("auto"), dict):
        kept["auto"] = metrics["auto"]
    return kept


def stage_text(info: dict[str, Any]) -> str:
    """`training 40/100` from a method's progress report."""
    text = str(info.get("stage", ""))
    if info.get("step") is not None:
        text += f" {info['step']}/{info.get('steps', '?')}"
    return text


class LocalBackend:
    """Computes vectors and generates in this process."""

    def __init__(self, lm: LoadedModel, batch_size: int = 20) -> None:
        from steering.generation.transformers.engine import Engine

        self.lm, self.batch_size, self.engine = lm, batch_size, Engine(lm)

    @classmethod
    def load(cls, model: str = "default", batch_size: int = 20) -> LocalBackend:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # only takes effect before torch starts its threads
        from steering.model.loading import load_model

        return cls(load_model(model), batch_size)

    def __enter__(self) -> LocalBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def info(self) -> dict[str, Any]:
        import torch

        return {
            "backend": "in-process",
            "model": self.lm.name,
            "fingerprint": self.lm.fingerprint,
            "device": str(self.lm.device),
            "dtype": str(self.lm.dtype).removeprefix("torch."),
            "torch_threads": torch.get_num_threads(),
        }

    def prepare(
        self, name: str, demos: list[Demonstration], method: str, options: dict[str, Any], stage: StageFn
    ) -> Prepared:
        from steering.methods import compute_vector

        vector = compute_vector(self.lm, demos, method, options=options, progress=lambda info: stage(stage_text(info)))
        return Prepared(
            vector,
            vector.method,
            list(vector.layers),
            float(vector.default_strength),
            vector.compute_seconds,
            reported_metrics(vector.metrics),
        )

    def complete(
        self, prompts: Sequence[str], steer: Steer | None, max_new_tokens: int, stop: Sequence[str]
    ) -> list[str]:
        from steering.generation.rows import GenerationRequest
        from steering.steer.inject import SteeringTerm

        terms = (SteeringTerm(steer.handle, steer.strength),) if steer is not None else ()
        texts: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            requests = [
                GenerationRequest(self.engine.encode(p), terms, max_new_tokens=max_new_tokens, stop=tuple(stop))
                for p in prompts[start : start + self.batch_size]
            ]
            texts.extend(r.text for r in self.engine.generate(requests))
        return texts

    def close(self) -> None:
        pass


class RemoteBackend:
    """Registers tasks on a running server and generates through /v1/generate (greedy, temperature 0)."""

    def __init__(self, url: str, api_key: str | None = None, *, concurrency: int = 8, timeout: float = 3600.0):
        self.client = Client(url, api_key or "", timeout=300.0)
        self.concurrency, self.timeout = concurrency, timeout
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="eval-http")

    def __enter__(self) -> RemoteBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def info(self) -> dict[str, Any]:
        ready = self.client.ready()
        return {
            "backend": "http",
            "url": self.client.base_url,
            "model": ready.get("model"),
            "fingerprint": ready.get("fingerprint"),
        }

    def prepare(
        self, name: str, demos: list[Demonstration], method: str, options: dict[str, Any], stage: StageFn
    ) -> Prepared:
        def progress(info: TaskInfo) -> None:
            stage(f"{info.status} {stage_text(info.progress or {})}".strip())

        # The name labels the latest run of this task and method: a later run with other demonstrations takes it.
        created = self.client.register(demos, method=method, name=name, options=options, take_name=True)
        info = self.client.wait(created.id, timeout=self.timeout, poll_interval=0.25, on_progress=progress)
        metrics = info.metrics or {}
        return Prepared(
            info.id,
            info.method,  # the method that made the vector (for `auto`, the one it chose)
            list(info.layers or []),
            float(info.default_strength if info.default_strength is not None else 1.0),
            float(metrics.get("compute_seconds", 0.0)),
            reported_metrics(metrics),
        )

    def complete(
        self, prompts: Sequence[str], steer: Steer | None, max_new_tokens: int, stop: Sequence[str]
    ) -> list[str]:
        steering = [(steer.handle, steer.strength)] if steer is not None else None

        def one(prompt: str) -> str:
            response = self.client.generate(
                prompt, steering=steering, max_new_tokens=max_new_tokens, temperature=0.0, stop=list(stop) or None
            )
            return response.text

        return list(self._pool.map(one, prompts))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.client.close()


@contextmanager
def open_backend(config: EvalConfig, api_key: str | None = None) -> Iterator[Backend]:
    backend: Backend = RemoteBackend(config.url, api_key) if config.url else LocalBackend.load(config.model)
    try:
        yield backend
    finally:
        backend.close()
