"""Native `POST /v1/embed`: task templates, truncation control, multimodal items."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.deps import FleetDep, TenantDep, until_disconnect
from gateway.routes.embeddings import json_response
from gateway.schemas.native import EmbedRequest
from services.errors import InvalidInput
from services.vectors import to_base64

router = APIRouter(tags=["native"])


@router.post("/v1/embed")
async def embed(body: EmbedRequest, request: Request, fleet: FleetDep, _tenant: TenantDep) -> Response:
    request.state.model = body.model
    for i, item in enumerate(body.inputs):
        for kind in ("image", "video"):
            if getattr(item, kind) is not None:
                raise InvalidInput(
                    f"{kind} inputs are not served by this gateway yet", field=f"inputs[{i}].{kind}"
                )
    texts = [item.text or "" for item in body.inputs]
    fleet.embedder.check_payload(len(texts), texts, "inputs")
    result = await until_disconnect(
        request,
        fleet.embedder.embed_texts(
            body.model,
            texts,
            task=body.task,
            instruction=body.instruction,
            truncate=body.truncate,
            dimensions=body.dimensions,
            normalize=body.normalize,
            field="inputs",
        ),
    )
    encode = to_base64 if body.encoding_format == "base64" else (lambda v: v)
    tokens = sum(result.tokens)
    template = result.template
    return json_response(
        {
            "object": "list",
            "model": body.model,
            "template": {"task": template.task, "template": template.template} if template else None,
            "data": [
                {
                    "index": i,
                    "embedding": encode(v),
                    "tokens": result.tokens[i],
                    "truncated": result.truncated[i],
                }
                for i, v in enumerate(result.vectors)
            ],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )
