"""Collections and their documents. Every call is scoped to the caller's tenant by the store."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from gateway.deps import (
    BlobsDep,
    DispatcherDep,
    EmbedderDep,
    JobsDep,
    SettingsDep,
    StoreDep,
    TenantDep,
    until_disconnect,
)
from gateway.responses import json_response
from gateway.schemas.collections import (
    CreateCollection,
    DeleteDocuments,
    Documents,
    ScrollRequest,
    UpdateCollection,
)
from services.blobs import BlobStore
from services.config import Settings
from services.errors import NotFound
from services.indexing import check_unique, index_documents
from services.jobs import JobStore
from services.jobs.dispatch import Dispatcher, create_job
from services.store import CollectionInfo, Layout, VectorStore

router = APIRouter(tags=["collections"])


async def describe(jobs: JobStore, tenant: str, info: CollectionInfo) -> dict[str, object]:
    public = info.public()
    running = await asyncio.to_thread(jobs.running, tenant, info.name)
    public["running_jobs"] = [j.id for j in running]
    return public


@router.post("/v1/collections", status_code=201)
async def create_collection(
    body: CreateCollection, embedder: EmbedderDep, store: StoreDep, jobs: JobsDep, tenant: TenantDep
) -> Response:
    spec = embedder.spec(body.model)
    embedder.check_dimensions(spec, body.dimensions)
    dims = body.dimensions or spec.dimension
    layout = Layout(
        spec.name, spec.version, dims, body.distance, body.on_disk, body.quantization, body.sparse
    )
    info = await asyncio.to_thread(
        store.create_collection, tenant, body.name, layout, query_log=body.query_log
    )
    return json_response(await describe(jobs, tenant, info), 201)


@router.patch("/v1/collections/{name}")
async def update_collection(
    name: str, body: UpdateCollection, store: StoreDep, jobs: JobsDep, tenant: TenantDep
) -> Response:
    """Settings a collection may change in place (today: the query-log opt-in)."""
    if body.query_log is not None:
        await asyncio.to_thread(store.set_query_log, tenant, name, body.query_log)
    info = await asyncio.to_thread(store.get_collection, tenant, name)
    return json_response(await describe(jobs, tenant, info))


@router.get("/v1/collections")
async def list_collections(store: StoreDep, tenant: TenantDep) -> Response:
    infos = await asyncio.to_thread(store.list_collections, tenant)
    return json_response({"collections": [i.public() for i in infos]})


@router.get("/v1/collections/{name}")
async def get_collection(name: str, store: StoreDep, jobs: JobsDep, tenant: TenantDep) -> Response:
    info = await asyncio.to_thread(store.get_collection, tenant, name)
    return json_response(await describe(jobs, tenant, info))


@router.delete("/v1/collections/{name}")
async def delete_collection(name: str, store: StoreDep, tenant: TenantDep) -> Response:
    await asyncio.to_thread(store.delete_collection, tenant, name)
    return json_response({"deleted": name})


async def start_job(
    settings: Settings,
    store: VectorStore,
    blobs: BlobStore,
    jobs: JobStore,
    dispatcher: Dispatcher,
    tenant: str,
    name: str,
    body: Documents,
) -> Response:
    await asyncio.to_thread(store.load_collection, tenant, name)  # 404 before any work
    docs = body.to_core()
    check_unique(docs)
    job = await asyncio.to_thread(create_job, jobs, blobs, settings.job_chunk_size, tenant, name, docs)
    await dispatcher.submit_job(job)
    return json_response({"job_id": job.id, **job.public()}, 202)


@router.put("/v1/collections/{name}/documents")
async def put_documents(
    name: str,
    body: Documents,
    request: Request,
    settings: SettingsDep,
    embedder: EmbedderDep,
    store: StoreDep,
    blobs: BlobsDep,
    dispatcher: DispatcherDep,
    tenant: TenantDep,
    jobs: JobsDep,
    async_: bool = Query(False, alias="async"),
) -> Response:
    if async_ or len(body.documents) > settings.async_threshold:
        return await start_job(settings, store, blobs, jobs, dispatcher, tenant, name, body)
    work = index_documents(embedder, store, blobs, tenant, name, body.to_core())
    return json_response({"upserted": await until_disconnect(request, work)})


@router.post("/v1/collections/{name}/jobs", status_code=202)
async def post_job(
    name: str,
    body: Documents,
    settings: SettingsDep,
    store: StoreDep,
    blobs: BlobsDep,
    jobs: JobsDep,
    dispatcher: DispatcherDep,
    tenant: TenantDep,
) -> Response:
    return await start_job(settings, store, blobs, jobs, dispatcher, tenant, name, body)


@router.delete("/v1/collections/{name}/documents")
async def delete_documents(name: str, body: DeleteDocuments, store: StoreDep, tenant: TenantDep) -> Response:
    await asyncio.to_thread(store.delete_points, tenant, name, body.ids, body.filter)
    return json_response({"deleted": True})


@router.get("/v1/collections/{name}/documents/{doc_id}")
async def get_document(name: str, doc_id: str, store: StoreDep, tenant: TenantDep) -> Response:
    points = await asyncio.to_thread(store.get_points, tenant, name, [doc_id])
    if not points:
        raise NotFound(f"document {doc_id!r} not found", field="doc_id")
    p = points[0]
    return json_response({"id": p.id, "payload": p.payload, "source": p.source})


@router.post("/v1/collections/{name}/scroll")
async def scroll(name: str, body: ScrollRequest, store: StoreDep, tenant: TenantDep) -> Response:
    """Page through a collection (export, audits, brute-force checks); `next_offset` is null at the end."""
    points, next_offset = await asyncio.to_thread(
        store.scroll, tenant, name, body.offset, body.limit, body.filter, body.with_payload, body.with_vectors
    )
    return json_response(
        {
            "points": [{"id": p.id, "payload": p.payload, "vector": p.vector} for p in points],
            "next_offset": next_offset,
        }
    )
