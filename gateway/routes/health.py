"""Liveness, readiness (every served model ready in Triton) and Prometheus metrics; always open."""

from __future__ import annotations

import orjson
from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from gateway.deps import FleetDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


@router.get("/readyz")
async def readyz(fleet: FleetDep) -> Response:
    models = await fleet.embedder.ready()
    ok = bool(models) and all(models.values())
    body = {"status": "ready" if ok else "not_ready", "models": models}
    headers = {} if ok else {"Retry-After": str(fleet.settings.retry_after_s)}
    return Response(
        orjson.dumps(body), status_code=200 if ok else 503, media_type="application/json", headers=headers
    )


@router.get("/metrics")
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
