"""Narrow dependencies: each route declares the parts it uses; `create_app` decides what they are.

The parts are built once in the lifespan (services.runtime.Runtime) and read from `app.state`; routes never
see the whole runtime.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Annotated, TypeVar

from fastapi import Depends, Header, Request

from gateway.auth import Authenticator
from services.blobs import BlobStore
from services.config import Settings
from services.embedder import Embedder
from services.errors import EmbedfleetError
from services.jobs import JobStore
from services.jobs.dispatch import Dispatcher
from services.migration.lifecycle import Migrations
from services.runtime import Runtime
from services.search import Searcher
from services.store import VectorStore

T = TypeVar("T")


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def get_settings(request: Request) -> Settings:
    return _runtime(request).settings


def get_embedder(request: Request) -> Embedder:
    return _runtime(request).embedder


def get_store(request: Request) -> VectorStore:
    return _runtime(request).store


def get_blobs(request: Request) -> BlobStore:
    return _runtime(request).blobs


def get_searcher(request: Request) -> Searcher:
    return _runtime(request).searcher


def get_migrations(request: Request) -> Migrations:
    return _runtime(request).migrations


def get_dispatcher(request: Request) -> Dispatcher:
    return _runtime(request).dispatcher


def get_jobs(request: Request) -> JobStore:
    return _runtime(request).jobs


def get_tenant(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    api_key: Annotated[str | None, Header(alias="api-key")] = None,
) -> str:
    auth: Authenticator = request.app.state.auth
    return auth.authenticate(authorization, api_key)


SettingsDep = Annotated[Settings, Depends(get_settings)]
EmbedderDep = Annotated[Embedder, Depends(get_embedder)]
StoreDep = Annotated[VectorStore, Depends(get_store)]
BlobsDep = Annotated[BlobStore, Depends(get_blobs)]
SearcherDep = Annotated[Searcher, Depends(get_searcher)]
MigrationsDep = Annotated[Migrations, Depends(get_migrations)]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]
JobsDep = Annotated[JobStore, Depends(get_jobs)]
TenantDep = Annotated[str, Depends(get_tenant)]


class ClientGone(EmbedfleetError):
    status = 499
    code = "client_closed_request"


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run `work`, cancelling it (and so its queued batcher rows) if the client disconnects first."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(watch())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    raise ClientGone("client disconnected")
