"""`POST /v1/rerank`: order documents by a cross-encoder's relevance to a query."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.deps import EmbedderDep, TenantDep, until_disconnect
from gateway.responses import json_response
from gateway.schemas.native import RerankRequest

router = APIRouter(tags=["rerank"])


@router.post("/v1/rerank")
async def rerank(
    body: RerankRequest, request: Request, embedder: EmbedderDep, _tenant: TenantDep
) -> Response:
    request.state.model = body.model
    texts = body.texts()
    embedder.check_payload(len(texts), texts, "documents")
    embedder.check_payload(1, [body.query], "query")
    work = embedder.score_pairs(
        body.model, body.query, texts, truncate=body.truncate, raw_scores=body.raw_scores
    )
    scored = await until_disconnect(request, work)
    order = np.argsort(-scored.scores, kind="stable")[: body.top_n]
    results = []
    for i in order.tolist():
        entry: dict[str, object] = {"index": i, "relevance_score": float(scored.scores[i])}
        if body.return_documents:
            entry["document"] = {"text": texts[i]}
        results.append(entry)
    tokens = sum(scored.tokens)
    return json_response(
        {
            "object": "list",
            "model": body.model,
            "results": results,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )
