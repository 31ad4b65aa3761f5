"""Native `POST /v1/embed`: task templates, truncation control, text/image/video/interleaved items."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.deps import EmbedderDep, TenantDep, until_disconnect
from gateway.responses import json_response
from gateway.schemas.native import EmbedRequest
from services.multimodal import Item, embed_items
from services.vectors import to_base64

router = APIRouter(tags=["native"])


@router.post("/v1/embed")
async def embed(body: EmbedRequest, request: Request, embedder: EmbedderDep, _tenant: TenantDep) -> Response:
    request.state.model = body.model
    texts = [item.text for item in body.inputs if item.text is not None]
    embedder.check_payload(len(body.inputs), texts, "inputs")
    encode = to_base64 if body.encoding_format == "base64" else (lambda v: v)
    items = [Item(i.text, i.image, i.video) for i in body.inputs]
    results, template = await until_disconnect(
        request,
        embed_items(
            embedder,
            body.model,
            items,
            task=body.task,
            instruction=body.instruction,
            dimensions=body.dimensions,
            normalize=body.normalize,
            truncate=body.truncate,
        ),
    )
    data = []
    for i, r in enumerate(results):
        entry = {
            "index": i,
            "kind": r.kind,
            "embedding": encode(r.vector),
            "tokens": r.tokens,
            "truncated": r.truncated,
        }
        if r.timestamps is not None:
            entry["frame_timestamps_s"] = r.timestamps
        data.append(entry)
    tokens = sum(r.tokens for r in results)
    return json_response(
        {
            "object": "list",
            "model": body.model,
            "template": {"task": template.task, "template": template.template} if template else None,
            "data": data,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )
