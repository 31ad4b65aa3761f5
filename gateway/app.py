"""`create_app(settings)`: the FastAPI gateway. Routes are thin; the lifespan builds the core once."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from gateway import errors
from gateway.auth import Authenticator
from gateway.deps import Fleet
from gateway.middleware import GatewayMiddleware
from gateway.routes import collections, embed, embeddings, health, jobs, migrations, search
from services.config import Settings, get_settings
from services.runtime import Runtime

log = logging.getLogger("embedfleet.gateway")


def build_fleet(settings: Settings) -> Fleet:
    return Fleet(runtime=Runtime.build(settings), auth=Authenticator(settings))


def create_app(settings: Settings, fleet: Fleet | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.fleet = fleet or build_fleet(settings)
        if app.state.fleet.auth.open:
            log.warning("no API keys configured: the gateway is open (tenant 'public')")
        yield
        for task in list(app.state.fleet.background):
            task.cancel()
        await app.state.fleet.runtime.close()

    app = FastAPI(title="embedfleet", version="0.1.0", lifespan=lifespan)
    errors.install(app)
    app.add_middleware(GatewayMiddleware, max_request_bytes=settings.max_request_bytes)
    for module in (health, embeddings, embed, collections, search, jobs, migrations):
        app.include_router(module.router)
    return app


def app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory` (several worker processes): settings from the environment."""
    return create_app(get_settings())
