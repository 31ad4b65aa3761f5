"""OpenAI-compatible `POST /v1/embeddings` and `GET /v1/models`.

`router` is the contract (OpenAPI, and what a router mounted alone serves). `LEAN_ROUTES` serve the same
POST ahead of it as a plain Starlette route: no dependency solving, the body validated once with
`model_validate_json`. Measured in-process with the encoder answering at once: 240-320 us of CPU a
request against 425-640 us through FastAPI's route (bench/README.md), on the path single-sentence
callers take most.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway.deps import EmbedderDep, TenantDep, get_embedder, get_tenant, until_disconnect
from gateway.responses import json_response
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


async def lean_embeddings(request: Request) -> Response:
    """`create_embeddings` without FastAPI's resolver, in the same order: the caller is authenticated
    first, then the body validated; a bad body raises the RequestValidationError FastAPI would, so the
    error names the field the same way."""
    await get_tenant(request)
    try:
        body = EmbeddingsRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None
    return await embeddings(body, request, await get_embedder(request))


class LeanRoute(Route):
    """A Starlette route that names itself in the scope as FastAPI's routes do: metrics are labelled by
    the route's path template (gateway.middleware)."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self
        await super().handle(scope, receive, send)


LEAN_ROUTES = (LeanRoute("/v1/embeddings", lean_embeddings, methods=["POST"], include_in_schema=False),)


@router.get("/v1/models")
async def list_models(embedder: EmbedderDep, _tenant: TenantDep) -> Response:
    data = [
        {"id": name, "object": "model", "created": 0, "owned_by": "embedfleet"}
        for name in sorted(embedder.settings.models)
    ]
    return json_response({"object": "list", "data": data})
