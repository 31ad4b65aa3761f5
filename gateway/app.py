"""`create_app(settings)`: the FastAPI gateway. Routes are thin; the lifespan builds the core once."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from gateway import errors
from gateway.auth import Authenticator
from gateway.middleware import GatewayMiddleware
from gateway.routes import collections, embed, embeddings, health, jobs, migrations, rerank, search
from services.config import Settings, get_settings
from services.runtime import Runtime

log = logging.getLogger("embedfleet.gateway")
ROUTERS = (health, embeddings, embed, rerank, collections, search, jobs, migrations)


def create_app(settings: Settings, runtime: Runtime | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.auth = Authenticator(settings)
        app.state.runtime = runtime or Runtime.build(settings)
        if app.state.auth.open:
            log.warning("no API keys configured: the gateway is open (tenant 'public')")
        await app.state.runtime.dispatcher.resume()
        if settings.gc_freeze:
            freeze_heap()
        try:
            yield
        finally:
            if settings.gc_freeze:
                gc.unfreeze()
            await app.state.runtime.close()

    # FastAPI's native OpenTelemetry hooks asked three global providers on every request whether to
    # trace (3% of the gateway's CPU under 64 single-sentence clients); the fleet's telemetry is
    # Prometheus (services/metrics.py)
    app = FastAPI(
        title="embedfleet",
        version="0.1.0",
        lifespan=lifespan,
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    errors.install(app)
    app.add_middleware(GatewayMiddleware, max_request_bytes=settings.max_request_bytes)
    # first of all routes (FastAPI's docs routes included): the router tries each path in turn
    app.router.routes[0:0] = [*embeddings.LEAN_ROUTES, *embed.LEAN_ROUTES]
    for module in ROUTERS:
        app.include_router(module.router)
    return app


def freeze_heap() -> None:
    """Collect once, then freeze what is left: the modules, models and runtime built at startup live as
    long as the process, and without this every full collection walks them all (a 140-160 ms pause of the
    event loop every few seconds under load on 2 vCPU; docs/operations.md). Shutdown unfreezes, so an app
    stopped inside a longer-lived process (tests) leaves nothing the collector cannot reach."""
    gc.collect()
    gc.freeze()


def app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory` (several worker processes): settings from the environment."""
    return create_app(get_settings())
