"""Dependency aliases: routes declare what they need, `create_app` decides what it is."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass, field
from typing import Annotated, TypeVar

from fastapi import Depends, Header, Request

from gateway.auth import Authenticator
from services.config import Settings
from services.embedder import Embedder
from services.errors import EmbedfleetError
from services.runtime import Runtime

T = TypeVar("T")


@dataclass
class Fleet:
    """Everything a route may use, built once in the app's lifespan: the core runtime plus auth."""

    runtime: Runtime
    auth: Authenticator
    background: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    @property
    def embedder(self) -> Embedder:
        return self.runtime.embedder

    def spawn(self, coro: Coroutine[object, object, None]) -> None:
        """Keep a reference to background work (in-process jobs) so it is not garbage-collected."""
        task = asyncio.get_running_loop().create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)


def get_fleet(request: Request) -> Fleet:
    fleet: Fleet = request.app.state.fleet
    return fleet


def get_tenant(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    api_key: Annotated[str | None, Header(alias="api-key")] = None,
) -> str:
    fleet = get_fleet(request)
    return fleet.auth.authenticate(authorization, api_key)


FleetDep = Annotated[Fleet, Depends(get_fleet)]
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
