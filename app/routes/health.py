"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.services import Services, services

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(svc: Services = Depends(services)) -> JSONResponse:
    store_ok = await svc.store.ping()
    backend = svc.backend
    generation_ok = backend.alive or not backend.serving  # a `worker` replica does not serve generation
    checks = {
        "role": svc.settings.role,
        "store": "ok" if store_ok else "unreachable",
        "engine": backend.name,
        "batcher": ("ok" if backend.alive else "stopped") if backend.serving else "off",
        "draining": svc.draining,
        "batcher_restarts": backend.restarts,
    }
    body = {"model": svc.lm.name, "fingerprint": svc.lm.fingerprint, **checks}
    if not store_ok or not generation_ok or svc.draining:
        return JSONResponse({"status": "unready", **body}, status_code=503, headers={"Retry-After": "2"})
    return JSONResponse({"status": "ready", **body})


@router.get("/metrics")
async def metrics(svc: Services = Depends(services)) -> Response:
    return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)
