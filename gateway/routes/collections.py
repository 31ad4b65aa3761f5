"""Collections and their documents. Every call is scoped to the caller's tenant by the store."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from gateway.deps import Fleet, FleetDep, TenantDep, until_disconnect
from gateway.routes.embeddings import json_response
from gateway.schemas.collections import (
    CreateCollection,
    DeleteDocuments,
    Documents,
    ScrollRequest,
    UpdateCollection,
)
from services.indexing import check_unique, index_documents
from services.jobs import ACTIVE, create_job, run_inprocess

router = APIRouter(tags=["collections"])


def describe(fleet: Fleet, tenant: str, info: object) -> dict[str, object]:
    public = info.public()  # type: ignore[attr-defined]
    jobs = fleet.runtime.jobs.list(tenant, public["name"])
    public["running_jobs"] = [j.id for j in jobs if j.state in ACTIVE]
    return public


@router.post("/v1/collections", status_code=201)
async def create_collection(body: CreateCollection, fleet: FleetDep, tenant: TenantDep) -> Response:
    spec = fleet.embedder.spec(body.model)
    fleet.embedder.check_dimensions(spec, body.dimensions)
    info = await asyncio.to_thread(
        fleet.runtime.store.create_collection,
        tenant,
        body.name,
        spec.name,
        spec.version,
        body.dimensions or spec.dimension,
        body.distance,
        body.on_disk,
        body.quantization,
        body.query_log,
    )
    return json_response(describe(fleet, tenant, info), 201)


@router.patch("/v1/collections/{name}")
async def update_collection(
    name: str, body: UpdateCollection, fleet: FleetDep, tenant: TenantDep
) -> Response:
    """Settings a collection may change in place (today: the query-log opt-in)."""
    store = fleet.runtime.store
    if body.query_log is not None:
        await asyncio.to_thread(store.set_query_log, tenant, name, body.query_log)
    info = await asyncio.to_thread(store.get_collection, tenant, name)
    return json_response(describe(fleet, tenant, info))


@router.get("/v1/collections")
async def list_collections(fleet: FleetDep, tenant: TenantDep) -> Response:
    infos = await asyncio.to_thread(fleet.runtime.store.list_collections, tenant)
    return json_response({"collections": [i.public() for i in infos]})


@router.get("/v1/collections/{name}")
async def get_collection(name: str, fleet: FleetDep, tenant: TenantDep) -> Response:
    info = await asyncio.to_thread(fleet.runtime.store.get_collection, tenant, name)
    return json_response(describe(fleet, tenant, info))


@router.delete("/v1/collections/{name}")
async def delete_collection(name: str, fleet: FleetDep, tenant: TenantDep) -> Response:
    await asyncio.to_thread(fleet.runtime.store.delete_collection, tenant, name)
    return json_response({"deleted": name})


async def start_job(fleet: Fleet, tenant: str, name: str, body: Documents) -> Response:
    await asyncio.to_thread(fleet.runtime.store.get_collection, tenant, name)  # 404 before any work
    check_unique(body.documents)
    job = await asyncio.to_thread(create_job, fleet.runtime, tenant, name, body.documents)
    if fleet.settings.broker_url:
        from services.worker.celery_app import enqueue_job

        await asyncio.to_thread(enqueue_job, fleet.settings, job)
    else:
        fleet.spawn(run_inprocess(fleet.runtime, job.id))
    return json_response({"job_id": job.id, **job.public()}, 202)


@router.put("/v1/collections/{name}/documents")
async def put_documents(
    name: str,
    body: Documents,
    request: Request,
    fleet: FleetDep,
    tenant: TenantDep,
    async_: bool = Query(False, alias="async"),
) -> Response:
    if async_ or len(body.documents) > fleet.settings.async_threshold:
        return await start_job(fleet, tenant, name, body)
    n = await until_disconnect(request, index_documents(fleet.runtime, tenant, name, body.documents))
    return json_response({"upserted": n})


@router.post("/v1/collections/{name}/jobs", status_code=202)
async def post_job(name: str, body: Documents, fleet: FleetDep, tenant: TenantDep) -> Response:
    return await start_job(fleet, tenant, name, body)


@router.delete("/v1/collections/{name}/documents")
async def delete_documents(name: str, body: DeleteDocuments, fleet: FleetDep, tenant: TenantDep) -> Response:
    await asyncio.to_thread(fleet.runtime.store.delete_points, tenant, name, body.ids, body.filter)
    return json_response({"deleted": True})


@router.get("/v1/collections/{name}/documents/{doc_id}")
async def get_document(name: str, doc_id: str, fleet: FleetDep, tenant: TenantDep) -> Response:
    from services.errors import NotFound

    points = await asyncio.to_thread(fleet.runtime.store.get_points, tenant, name, [doc_id])
    if not points:
        raise NotFound(f"document {doc_id!r} not found", field="doc_id")
    p = points[0]
    return json_response({"id": p.id, "payload": p.payload, "source": p.source})


@router.post("/v1/collections/{name}/scroll")
async def scroll(name: str, body: ScrollRequest, fleet: FleetDep, tenant: TenantDep) -> Response:
    """Page through a collection (export, audits, brute-force checks); `next_offset` is null at the end."""
    points, next_offset = await asyncio.to_thread(
        fleet.runtime.store.scroll,
        tenant,
        name,
        body.offset,
        body.limit,
        body.filter,
        body.with_payload,
        body.with_vectors,
    )
    return json_response(
        {
            "points": [{"id": p.id, "payload": p.payload, "vector": p.vector} for p in points],
            "next_offset": next_offset,
        }
    )
