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
from gateway.routes import embed, embeddings, health
from services.cache import make_cache
from services.config import Settings, get_settings
from services.embedder import Embedder
from services.encoders.triton import TritonEncoder
from services.registry import load_registry

log = logging.getLogger("embedfleet.gateway")


def build_fleet(settings: Settings) -> Fleet:
    if settings.triton_url is None:
        raise RuntimeError("triton_url is unset: `embedfleet serve` starts a local Triton and sets it")
    registry = load_registry(settings.registry_path)
    encoder = TritonEncoder(settings.triton_url, settings.triton_timeout_s, settings.retry_after_s)
    embedder = Embedder(settings, registry, encoder, make_cache(settings))
    return Fleet(settings=settings, embedder=embedder, auth=Authenticator(settings))


def create_app(settings: Settings, fleet: Fleet | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.fleet = fleet or build_fleet(settings)
        if app.state.fleet.auth.open:
            log.warning("no API keys configured: the gateway is open (tenant 'public')")
        yield
        await app.state.fleet.embedder.close()

    app = FastAPI(title="embedfleet", version="0.1.0", lifespan=lifespan)
    errors.install(app)
    app.add_middleware(GatewayMiddleware, max_request_bytes=settings.max_request_bytes)
    for module in (health, embeddings, embed):
        app.include_router(module.router)
    return app


def app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory` (several worker processes): settings from the environment."""
    return create_app(get_settings())
