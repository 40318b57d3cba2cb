"""The objects one server process holds, built in the app's lifespan and reached through `Depends`."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from app.auth import KeyChecker
from app.bounds import Bounds
from app.generation import GenerationService
from app.metrics import Metrics
from app.settings import Settings
from app.store import TaskStore
from app.tasks import TaskService
from app.worker import VectorWorker
from steering.generation.backend import GenerationBackend
from steering.model.loading import LoadedModel


@dataclass
class Services:
    settings: Settings
    lm: LoadedModel
    store: TaskStore
    worker: VectorWorker
    tasks: TaskService
    backend: GenerationBackend
    generation: GenerationService
    keys: KeyChecker
    metrics: Metrics
    bounds: Bounds
    draining: bool = False  # set on SIGTERM: /readyz answers 503 so load balancers stop sending


def services(request: Request) -> Services:
    return request.app.state.services


def owner(request: Request) -> str | None:
    """The caller's owner id, after checking its API key (None on an open server)."""
    return request.app.state.services.keys.owner(request)
