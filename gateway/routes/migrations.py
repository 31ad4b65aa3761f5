"""Model upgrades of a collection: start, watch, cancel, roll back."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from gateway.deps import DispatcherDep, MigrationsDep, TenantDep
from gateway.responses import json_response
from gateway.schemas.collections import StartMigration
from services.errors import NotFound

router = APIRouter(tags=["migrations"])


@router.post("/v1/collections/{name}/migrations", status_code=202)
async def start_migration(
    name: str, body: StartMigration, migrations: MigrationsDep, dispatcher: DispatcherDep, tenant: TenantDep
) -> Response:
    mig = await migrations.start(tenant, name, body.to_model, body.compensator, body.sparse)
    await dispatcher.submit_migration(tenant, name)
    return json_response(mig.public(), 202)


@router.get("/v1/collections/{name}/migrations")
async def get_migration(name: str, migrations: MigrationsDep, tenant: TenantDep) -> Response:
    mig = await migrations.get(tenant, name)
    if mig is None:
        raise NotFound(f"collection {name!r} has no migration", field="name")
    return json_response(mig.public())


@router.delete("/v1/collections/{name}/migrations")
async def cancel_migration(name: str, migrations: MigrationsDep, tenant: TenantDep) -> Response:
    return json_response((await migrations.cancel(tenant, name)).public())


@router.post("/v1/collections/{name}/migrations/rollback")
async def rollback_migration(name: str, migrations: MigrationsDep, tenant: TenantDep) -> Response:
    return json_response((await migrations.rollback(tenant, name)).public())
