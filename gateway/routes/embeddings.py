"""OpenAI-compatible `POST /v1/embeddings` and `GET /v1/models`.

`router` is the contract; `LEAN_ROUTES` serve the same POST ahead of it (gateway/routes/lean.py), on the
path single-sentence callers take most.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.deps import EmbedderDep, TenantDep, get_embedder, until_disconnect
from gateway.responses import json_response
from gateway.routes.lean import lean_post
from gateway.schemas.openai import EmbeddingsRequest
from services.embedder import Embedder
from services.vectors import to_base64

router = APIRouter(tags=["openai"])


async def embeddings(body: EmbeddingsRequest, request: Request, embedder: Embedder) -> Response:
    """The route's work, whichever route received it."""
    request.state.model = body.model
    texts, ids = body.parsed()
    embedder.check_payload(len(texts if texts is not None else ids or []), texts, "input")
    result = await until_disconnect(
        request,
        embedder.embed_texts(
            body.model,
            texts,
            ids,
            task=body.task,
            apply_template=body.task is not None,
            truncate=body.truncate,
            dimensions=body.dimensions,
        ),
    )
    encode = to_base64 if body.encoding_format == "base64" else (lambda v: v)
    tokens = sum(result.tokens)
    return json_response(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": encode(v)}
                for i, v in enumerate(result.vectors)
            ],
            "model": body.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


@router.post("/v1/embeddings")
async def create_embeddings(
    body: EmbeddingsRequest, request: Request, embedder: EmbedderDep, _tenant: TenantDep
) -> Response:
    return await embeddings(body, request, embedder)


async def _lean(body: EmbeddingsRequest, request: Request) -> Response:
    return await embeddings(body, request, await get_embedder(request))


LEAN_ROUTES = (lean_post("/v1/embeddings", EmbeddingsRequest, _lean),)


@router.get("/v1/models")
async def list_models(embedder: EmbedderDep, _tenant: TenantDep) -> Response:
    data = [
        {"id": name, "object": "model", "created": 0, "owned_by": "embedfleet"}
        for name in sorted(embedder.settings.models)
    ]
    return json_response({"object": "list", "data": data})
