"""Model upgrades of a collection: start, watch, cancel, roll back."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict
from starlette.responses import Response

from gateway.deps import FleetDep, TenantDep
from gateway.routes.embeddings import json_response
from services.errors import NotFound
from services.migration import lifecycle

router = APIRouter(tags=["migrations"])


class StartMigration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to_model: str
    compensator: str = "auto"


@router.post("/v1/collections/{name}/migrations", status_code=202)
async def start_migration(name: str, body: StartMigration, fleet: FleetDep, tenant: TenantDep) -> Response:
    mig = await lifecycle.start(fleet.runtime, tenant, name, body.to_model, body.compensator)
    if fleet.settings.broker_url:
        from services.worker.celery_app import enqueue_migration_step

        await asyncio.to_thread(enqueue_migration_step, fleet.settings, tenant, name)
    else:
        fleet.spawn(lifecycle.run_inprocess(fleet.runtime, tenant, name))
    return json_response(lifecycle.public(mig), 202)


@router.get("/v1/collections/{name}/migrations")
async def get_migration(name: str, fleet: FleetDep, tenant: TenantDep) -> Response:
    info = await asyncio.to_thread(fleet.runtime.store.get_collection, tenant, name)
    if info.migration is None:
        raise NotFound(f"collection {name!r} has no migration", field="name")
    return json_response(lifecycle.public(info.migration))


@router.delete("/v1/collections/{name}/migrations")
async def cancel_migration(name: str, fleet: FleetDep, tenant: TenantDep) -> Response:
    return json_response(lifecycle.public(await lifecycle.cancel(fleet.runtime, tenant, name)))


@router.post("/v1/collections/{name}/migrations/rollback")
async def rollback_migration(name: str, fleet: FleetDep, tenant: TenantDep) -> Response:
    return json_response(lifecycle.public(await lifecycle.rollback(fleet.runtime, tenant, name)))
