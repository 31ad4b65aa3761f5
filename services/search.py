"""Search a collection: embed the query on the template's query side, then ask the store.

The read plan (raw, compensated or merged while a model upgrade backfills) is decided here, in one place;
without a migration it is `raw`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from services.indexing import task_for
from services.multimodal import media_bytes
from services.registry import Side
from services.store import StoredPoint

if TYPE_CHECKING:
    from services.runtime import Runtime


@dataclass(frozen=True)
class SearchResult:
    hits: list[StoredPoint]
    model: str
    template: dict[str, str] | None
    path: str  # raw | compensated | merged | v1_fallback


async def search(
    rt: Runtime,
    tenant: str,
    name: str,
    query: dict[str, str | None],
    *,
    task: str | None = None,
    top_k: int = 10,
    filter: Any = None,
    with_payload: bool = True,
    score_threshold: float | None = None,
) -> SearchResult:
    info = await asyncio.to_thread(rt.store.get_collection, tenant, name)
    spec = rt.registry.get(info.model)
    dims = info.dimension if info.dimension != spec.dimension else None
    template = None
    if query.get("text") is not None:
        out = await rt.embedder.embed_texts(
            info.model,
            [query["text"] or ""],
            task=task_for(spec, task),
            side=Side.query,
            dimensions=dims,
            field="query.text",
        )
        vector = out.vectors[0]
        if out.template is not None:
            template = {"task": out.template.task, "template": out.template.template}
    else:
        kind = "image" if query.get("image") is not None else "video"
        data = await media_bytes(rt.settings, kind, query.get(kind) or "", f"query.{kind}")
        media = await rt.embedder.embed_media(info.model, kind, data, dimensions=dims, field=f"query.{kind}")
        vector = media.vector
    hits = await asyncio.to_thread(
        rt.store.search, tenant, name, vector, top_k, filter, with_payload, score_threshold
    )
    return SearchResult(hits, info.model, template, "raw")
