"""Search a collection: embed the query on the template's query side, then ask the store.

The read plan (raw, compensated or merged while a model upgrade backfills) is decided here, in one place;
without a migration it is `raw`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from services import metrics, querylog
from services.indexing import task_for
from services.migration import drift
from services.migration.lifecycle import ACTIVE
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


_compensators: dict[str, drift.Compensator] = {}


def _compensator(rt: Runtime, digest: str) -> drift.Compensator:
    comp = _compensators.get(digest)
    if comp is None:
        comp = _compensators[digest] = drift.load(rt.blobs.get(digest))
    return comp


def rrf(result_lists: list[list[StoredPoint]], top_k: int, k: int = 60) -> list[StoredPoint]:
    """Reciprocal-rank fusion: compensated and native scores live on different scales, ranks do not."""
    scores: dict[str, float] = {}
    first: dict[str, StoredPoint] = {}
    for hits in result_lists:
        for rank, hit in enumerate(hits):
            scores[hit.id] = scores.get(hit.id, 0.0) + 1.0 / (k + rank + 1)
            first.setdefault(hit.id, hit)
    order = sorted(scores, key=lambda i: -scores[i])[:top_k]
    return [replace(first[i], score=scores[i]) for i in order]


async def _embed_text(rt: Runtime, model: str, text: str, task: str | None, dims: int | None):  # type: ignore[no-untyped-def]
    spec = rt.registry.get(model)
    return await rt.embedder.embed_texts(
        model, [text], task=task_for(spec, task), side=Side.query, dimensions=dims, field="query.text"
    )


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
    merge: bool = False,
) -> SearchResult:
    """The read plan: `raw` normally; during a migration `compensated` (v2 query mapped into v1's space,
    searched on v1), `merged` (also raw v2 on the backfilled v2 points, fused by rank), or `v1_fallback`
    (v1 queries, when no compensator beats not upgrading)."""
    info = await asyncio.to_thread(rt.store.get_collection, tenant, name)
    mig = info.migration or {}
    migrating = mig.get("state") in ACTIVE
    spec = rt.registry.get(info.model)
    dims = info.dimension if info.dimension != spec.dimension else None
    template = None
    path = "v1_fallback" if migrating else "raw"
    comp_blob = mig.get("compensator", {}).get("blob")
    if query.get("text") is not None:
        text = query["text"] or ""
        querylog.remember(rt, info, text)
        if migrating and comp_blob and not mig.get("use_v1") and mig.get("state") != "sampling":
            out = await _embed_text(rt, mig["to"]["model"], text, task, None)
            comp = _compensator(rt, comp_blob)
            vector = await asyncio.to_thread(comp.apply, out.vectors[:1])
            vector = vector[0]
            path = "compensated"
            if merge:
                native = out.vectors[0][: mig["to"]["dimension"]]
                lists = await asyncio.gather(
                    asyncio.to_thread(
                        rt.store.search,
                        tenant,
                        name,
                        vector,
                        top_k,
                        filter,
                        with_payload,
                        None,
                        mig["source"]["physical"],
                    ),
                    asyncio.to_thread(
                        rt.store.search,
                        tenant,
                        name,
                        native,
                        top_k,
                        filter,
                        with_payload,
                        None,
                        mig["target"],
                    ),
                )
                metrics.SEARCHES.labels(name, "merged").inc()
                return SearchResult(rrf(list(lists), top_k), mig["to"]["model"], None, "merged")
        else:
            out = await _embed_text(rt, info.model, text, task, dims)
            vector = out.vectors[0]
        if out.template is not None:
            template = {"task": out.template.task, "template": out.template.template}
    else:
        kind = "image" if query.get("image") is not None else "video"
        data = await media_bytes(rt.settings, kind, query.get(kind) or "", f"query.{kind}")
        media = await rt.embedder.embed_media(info.model, kind, data, dimensions=dims, field=f"query.{kind}")
        vector = media.vector
    physical = mig["source"]["physical"] if migrating else None
    hits = await asyncio.to_thread(
        rt.store.search, tenant, name, vector, top_k, filter, with_payload, score_threshold, physical
    )
    metrics.SEARCHES.labels(name, path).inc()
    model = mig["to"]["model"] if path == "compensated" else info.model
    return SearchResult(hits, model, template, path)
