"""The FastAPI application: `create_app(settings)` for tests and embedding, `app` for `uvicorn app.main:app`."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
from contextlib import asynccontextmanager
from pathlib import Path

import torch
from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from app.auth import KeyChecker
from app.backends import build_backend
from app.bounds import Bounds
from app.connections import uvicorn_config
from app.errors import ERROR_RESPONSES, install_error_handlers
from app.generation import GenerationService
from app.metrics import Metrics
from app.middleware import BodyEncoding, BodyLimit, BodyReading, RequestId, RequestMetrics
from app.openai import routes as openai
from app.routes import generate, health, tasks, vectors
from app.services import Services
from app.settings import Settings
from app.shutdown import DrainingServer
from app.store import open_store
from app.tasks import TaskService
from app.vector_cache import VectorCache
from app.worker import VectorWorker
from steering.generation.transformers.engine import Engine
from steering.methods.capture import activation_scale
from steering.model.loading import load_model
from steering.model.twin import twin

log = logging.getLogger("steering.app")
STATIC = Path(__file__).parent / "static"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        lm = await asyncio.to_thread(load_model, settings.model, device=settings.device, dtype=settings.dtype)
        log.info("model %s loaded on %s (%s), fingerprint %s", lm.name, lm.device, lm.dtype, lm.fingerprint)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        store = open_store(settings.redis_url, settings.data_dir, prefix=settings.redis_prefix)
        log.info("task store: %s", "redis" if settings.redis_url else f"sqlite in {settings.data_dir}")
        keys = KeyChecker(settings.keys())
        if keys.open:
            log.warning(
                "no STEER_API_KEYS set: the API is open to anyone who can reach %s:%s", settings.host, settings.port
            )
        bounds = Bounds(settings, lm.arch.num_layers, await asyncio.to_thread(activation_scale, lm))
        vectors = VectorCache(settings.vector_cache_bytes)
        # Computations run on `lm` and pause before any layer when generation waits; generation runs on a
        # twin module tree over the same weights, so a paused computation's hooks never see it.
        lm.lock.patience_s = settings.compute_patience_s
        lm.lock.bind(lm.arch.layers)
        serving = twin(lm)
        worker = VectorWorker(lm, store, vectors, settings, metrics)
        task_service = TaskService(serving, store, worker, vectors, settings, metrics, bounds)
        backend = build_backend(Engine(serving), settings, metrics)
        backend.start()
        app.state.services = Services(
            settings=settings,
            lm=serving,
            store=store,
            worker=worker,
            tasks=task_service,
            backend=backend,
            generation=GenerationService(serving, task_service, backend, settings),
            keys=keys,
            metrics=metrics,
            bounds=bounds,
        )
        worker.start()  # adopts unfinished tasks now and every reconcile_interval_s (not on an `api` replica)
        try:
            yield
        finally:
            app.state.services.draining = True
            await backend.close()
            await worker.close()
            await store.close()

    app = FastAPI(
        title="Steering service",
        version="0.1.0",
        description="Register a task by its demonstrations once; generate zero-shot with its task vector.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    for router in (vectors.router, tasks.router, generate.router, openai.router):
        app.include_router(router, responses=ERROR_RESPONSES)
    app.include_router(health.router)
    if (STATIC / "index.html").exists():

        @app.get("/", include_in_schema=False)
        async def playground() -> FileResponse:
            return FileResponse(STATIC / "index.html")

        app.mount("/static", StaticFiles(directory=STATIC), name="static")

    app.add_middleware(RequestMetrics, metrics=metrics)
    app.add_middleware(
        BodyLimit,
        max_bytes=settings.max_body_bytes,
        per_path={"/v1/tasks/import": settings.max_vector_bytes},
    )
    app.add_middleware(BodyEncoding)
    app.add_middleware(RequestId)
    app.add_middleware(
        BodyReading,
        timeout_s=settings.body_timeout_s,
        min_rate=settings.body_min_rate,
        discard_bytes=settings.discard_body_bytes,
        discard_timeout_s=settings.discard_body_timeout_s,
    )
    return app


def refuse_open_public_server(settings: Settings) -> None:
    """No keys and a non-loopback address would publish an open API by accident: refuse, say how to fix it."""
    if settings.keys() or settings.allow_open or is_loopback(settings.host):
        return
    raise SystemExit(
        f"refusing to serve without API keys on {settings.host}: set STEER_API_KEYS=key1,key2 (clients send "
        "'Authorization: Bearer key1'), or listen on 127.0.0.1, or set STEER_ALLOW_OPEN=true on a trusted network"
    )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def run() -> None:
    """Start the server with uvicorn on the configured host and port (`steer serve`, `make serve`)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    refuse_open_public_server(settings)
    app = create_app(settings)
    DrainingServer(uvicorn_config(app, settings), app).run()


app = create_app()
