"""Search a collection: plan from one metadata snapshot, embed the query per leg, ask the store.

The read plan (raw, compensated, merged or v1 fallback while a model upgrade backfills) comes from
`services.migration.state.read_plan`; each leg names the physical collection and the model that embeds
for it, so a cutover between two reads cannot pair one model's query with the other's vectors. If a
leg's physical collection was dropped after the snapshot (the grace period ended, a rollback or cancel),
the search re-reads the plan and runs once more inside the request.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from services import metrics, querylog
from services.errors import StaleTarget
from services.indexing import task_for
from services.migration import drift
from services.migration.state import Leg, ReadPlan, read_plan
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


def _dimensions(rt: Runtime, leg: Leg) -> int | None:
    """The size to embed at: native for a compensated leg (the map takes the model's full vector),
    the physical's size (Matryoshka, when smaller) for a raw one."""
    if leg.compensator is not None:
        return None
    native = rt.registry.get(leg.model).dimension
    return leg.physical.dimension if leg.physical.dimension != native else None


async def _leg_vectors(
    rt: Runtime, plan: ReadPlan, query: dict[str, str | None], task: str | None
) -> tuple[list[np.ndarray], dict[str, str] | None]:
    """One query vector per leg, each model embedding once per size; compensated legs mapped."""
    embedded: dict[tuple[str, int | None], np.ndarray] = {}
    template = None
    text = query.get("text")
    for leg in plan.legs:
        key = (leg.model, _dimensions(rt, leg))
        if key in embedded:
            continue
        if text is not None:
            spec = rt.registry.get(leg.model)
            out = await rt.embedder.embed_texts(
                leg.model,
                [text],
                task=task_for(spec, task),
                side=Side.query,
                dimensions=key[1],
                field="query.text",
            )
            embedded[key] = out.vectors[0]
            if template is None and out.template is not None:
                template = {"task": out.template.task, "template": out.template.template}
        else:
            kind = "image" if query.get("image") is not None else "video"
            data = await media_bytes(rt.settings, kind, query.get(kind) or "", f"query.{kind}")
            media = await rt.embedder.embed_media(
                leg.model, kind, data, dimensions=key[1], field=f"query.{kind}"
            )
            embedded[key] = media.vector
    vectors = []
    for leg in plan.legs:
        vec = embedded[(leg.model, _dimensions(rt, leg))]
        if leg.compensator is not None:
            comp = _compensator(rt, leg.compensator)
            vec = (await asyncio.to_thread(comp.apply, vec[None, :]))[0]
        vectors.append(vec)
    return vectors, template


async def _search_once(
    rt: Runtime,
    tenant: str,
    name: str,
    query: dict[str, str | None],
    *,
    task: str | None,
    top_k: int,
    filter: Any,
    with_payload: bool,
    score_threshold: float | None,
    merge: bool,
    log_query: bool,
) -> SearchResult:
    info = await asyncio.to_thread(rt.store.load_collection, tenant, name)
    text = query.get("text")
    plan = read_plan(info, text=text is not None, merge=merge)
    if text is not None and log_query:
        querylog.remember(rt, info, text)
    vectors, template = await _leg_vectors(rt, plan, query, task)
    threshold = score_threshold if len(plan.legs) == 1 else None  # fused scores are ranks, not similarities
    lists = await asyncio.gather(
        *(
            asyncio.to_thread(
                rt.store.search, tenant, name, vec, top_k, filter, with_payload, threshold, leg.physical.name
            )
            for leg, vec in zip(plan.legs, vectors, strict=True)
        )
    )
    hits = lists[0] if len(lists) == 1 else rrf(list(lists), top_k)
    metrics.SEARCHES.labels(name, plan.path).inc()
    return SearchResult(hits, plan.model, template, plan.path)


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
    """Nearest documents to `query` (exactly one of text, image, video) along the collection's read plan;
    `merge` during a migration also searches the backfilled v2 points and fuses by rank."""
    kwargs: dict[str, Any] = {
        "task": task,
        "top_k": top_k,
        "filter": filter,
        "with_payload": with_payload,
        "score_threshold": score_threshold,
        "merge": merge,
    }
    try:
        return await _search_once(rt, tenant, name, query, log_query=True, **kwargs)
    except StaleTarget:  # a physical of the snapshot was dropped meanwhile: the new plan avoids it
        return await _search_once(rt, tenant, name, query, log_query=False, **kwargs)
