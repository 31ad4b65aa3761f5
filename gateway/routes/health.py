"""Liveness, readiness (every served model ready in Triton) and Prometheus metrics; always open."""

from __future__ import annotations

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from gateway.deps import EmbedderDep
from gateway.responses import json_response

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


@router.get("/readyz")
async def readyz(embedder: EmbedderDep) -> Response:
    models = await embedder.ready()
    ok = bool(models) and all(models.values())
    response = json_response({"status": "ready" if ok else "not_ready", "models": models}, 200 if ok else 503)
    if not ok:
        response.headers["Retry-After"] = str(embedder.settings.retry_after_s)
    return response


@router.get("/metrics")
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
