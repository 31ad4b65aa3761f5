"""Search one collection, or several in one call."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.deps import Fleet, FleetDep, TenantDep, until_disconnect
from gateway.routes.embeddings import json_response
from gateway.schemas.collections import BatchSearch, SearchRequest
from services.search import SearchResult, search

router = APIRouter(tags=["search"])


def render(result: SearchResult) -> dict[str, object]:
    return {
        "results": [{"id": h.id, "score": h.score, "payload": h.payload} for h in result.hits],
        "model": result.model,
        "template": result.template,
        "path": result.path,
    }


def run(fleet: Fleet, tenant: str, name: str, body: SearchRequest, merge: bool = False):  # type: ignore[no-untyped-def]
    return search(
        fleet.runtime,
        tenant,
        name,
        body.query.model_dump(),
        task=body.task,
        top_k=body.top_k,
        filter=body.filter,
        with_payload=body.with_payload,
        score_threshold=body.score_threshold,
        merge=merge,
    )


@router.post("/v1/collections/{name}/search")
async def search_collection(
    name: str, body: SearchRequest, request: Request, fleet: FleetDep, tenant: TenantDep, merge: bool = False
) -> Response:
    """`?merge=true` during a migration also searches the backfilled v2 points (rank fusion)."""
    return json_response(render(await until_disconnect(request, run(fleet, tenant, name, body, merge))))


@router.post("/v1/search/batch")
async def search_batch(body: BatchSearch, request: Request, fleet: FleetDep, tenant: TenantDep) -> Response:
    results = await until_disconnect(
        request, asyncio.gather(*(run(fleet, tenant, s.collection, s) for s in body.searches))
    )
    return json_response({"results": [render(r) for r in results]})
