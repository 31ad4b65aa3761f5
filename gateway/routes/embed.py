"""Native `POST /v1/embed`: task templates, truncation control, text/image/video/interleaved items."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.deps import (
    CalibrationsDep,
    EmbedderDep,
    TenantDep,
    get_calibrations,
    get_embedder,
    until_disconnect,
)
from gateway.responses import json_response
from gateway.routes.lean import lean_post
from gateway.schemas.native import EmbedRequest
from services.calibration import Calibrations
from services.embedder import Embedder
from services.multimodal import Item, embed_items
from services.vectors import encode_base64, quantize

router = APIRouter(tags=["native"])


async def _encodings(
    body: EmbedRequest, calibrations: Calibrations, vectors: np.ndarray
) -> dict[str, list[Any]]:
    """Each asked encoding of every vector, as lists of numbers or (encoding_format=base64) strings."""
    out: dict[str, list[Any]] = {}
    for kind in body.embedding_types or ["float"]:
        ranges = None
        if kind in ("int8", "uint8"):
            ranges = await calibrations.ranges(body.model, body.dimensions, body.normalize)
        quantized = quantize(vectors, ranges, kind)
        if body.encoding_format == "base64":
            out[kind] = [encode_base64(v, kind) for v in quantized]
        else:
            out[kind] = list(quantized)
    return out


@router.post("/v1/embed")
async def embed(
    body: EmbedRequest,
    request: Request,
    embedder: EmbedderDep,
    calibrations: CalibrationsDep,
    _tenant: TenantDep,
) -> Response:
    return await embed_response(body, request, embedder, calibrations)


async def _lean(body: EmbedRequest, request: Request) -> Response:
    return await embed_response(body, request, await get_embedder(request), await get_calibrations(request))


LEAN_ROUTES = (lean_post("/v1/embed", EmbedRequest, _lean),)


async def embed_response(
    body: EmbedRequest, request: Request, embedder: Embedder, calibrations: Calibrations
) -> Response:
    """The route's work, whichever route received it (`LEAN_ROUTES` serve it ahead of `router`)."""
    request.state.model = body.model
    embedder.check_payload(len(body.inputs), [item.text for item in body.inputs], "inputs")
    items = [Item(i.text, i.image, i.video, tuple(i.images or ())) for i in body.inputs]
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
    encodings = await _encodings(body, calibrations, np.stack([r.vector for r in results]))
    data = []
    for i, r in enumerate(results):
        entry: dict[str, object] = {"index": i, "kind": r.kind, "tokens": r.tokens, "truncated": r.truncated}
        if body.embedding_types is None:
            entry["embedding"] = encodings["float"][i]
        else:
            entry["embeddings"] = {kind: values[i] for kind, values in encodings.items()}
        if r.timestamps is not None:
            entry["frame_timestamps_s"] = r.timestamps
        if r.prompt is not None:
            entry["prompt"] = r.prompt  # vlm: the rendered template of this item
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
