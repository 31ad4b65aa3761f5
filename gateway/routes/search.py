"""Search one collection, or several in one call."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.deps import SearcherDep, TenantDep, until_disconnect
from gateway.responses import json_response
from gateway.schemas.collections import BatchSearch, SearchRequest
from services.multimodal import Item
from services.search import Searcher, SearchOptions, SearchResult

router = APIRouter(tags=["search"])


def render(result: SearchResult) -> dict[str, object]:
    return {
        "results": [{"id": h.id, "score": h.score, "payload": h.payload} for h in result.hits],
        "model": result.model,
        "template": result.template,
        "path": result.path,
        **({"reranked_by": result.reranked_by} if result.reranked_by else {}),
    }


async def _run(searcher: Searcher, tenant: str, name: str, body: SearchRequest, merge: bool) -> SearchResult:
    opts = SearchOptions(
        task=body.task,
        top_k=body.top_k,
        filter=body.filter,
        with_payload=body.with_payload,
        score_threshold=body.score_threshold,
        mode=body.mode,
        fusion=body.fusion,
        weights=body.weights,
        diversity=body.diversity,
        candidates=body.candidates,
        rerank_model=body.rerank.model if body.rerank else None,
        rerank_top_n=body.rerank.top_n if body.rerank else None,
    )
    query = Item(body.query.text, body.query.image, body.query.video)
    return await searcher.search(tenant, name, query, opts, merge=merge)


@router.post("/v1/collections/{name}/search")
async def search_collection(
    name: str,
    body: SearchRequest,
    request: Request,
    searcher: SearcherDep,
    tenant: TenantDep,
    merge: bool = False,
) -> Response:
    """`?merge=true` during a migration also searches the backfilled v2 points (rank fusion)."""
    return json_response(render(await until_disconnect(request, _run(searcher, tenant, name, body, merge))))


@router.post("/v1/search/batch")
async def search_batch(
    body: BatchSearch, request: Request, searcher: SearcherDep, tenant: TenantDep
) -> Response:
    runs = (_run(searcher, tenant, s.collection, s, False) for s in body.searches)
    results = await until_disconnect(request, asyncio.gather(*runs))
    return json_response({"results": [render(r) for r in results]})
