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
from typing import Any

import numpy as np

from services import metrics
from services.blobs import BlobStore
from services.embedder import Embedder
from services.errors import StaleTarget
from services.indexing import task_for
from services.migration import drift
from services.migration.state import Leg, ReadPlan, read_plan
from services.multimodal import Item, media_bytes
from services.querylog import QueryLog
from services.registry import Side
from services.store import StoredPoint, VectorStore


@dataclass(frozen=True)
class SearchResult:
    hits: list[StoredPoint]
    model: str
    template: dict[str, str] | None
    path: str  # raw | compensated | merged | v1_fallback


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


class Compensators:
    """Fitted compensators by blob digest, loaded once per process (they are immutable)."""

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs
        self._loaded: dict[str, drift.Compensator] = {}

    async def apply(self, digest: str, vector: np.ndarray) -> np.ndarray:
        comp = self._loaded.get(digest)
        if comp is None:
            comp = self._loaded[digest] = drift.load(await asyncio.to_thread(self.blobs.get, digest))
        return comp.apply(vector[None, :])[0]


class Searcher:
    def __init__(
        self, embedder: Embedder, store: VectorStore, querylog: QueryLog, compensators: Compensators
    ):
        self.embedder = embedder
        self.store = store
        self.querylog = querylog
        self.compensators = compensators

    def _dimensions(self, leg: Leg) -> int | None:
        """The size to embed at: native for a compensated leg (the map takes the model's full vector),
        the physical's size (Matryoshka, when smaller) for a raw one."""
        if leg.compensator is not None:
            return None
        native = self.embedder.registry.get(leg.model).dimension
        return leg.physical.dimension if leg.physical.dimension != native else None

    async def _leg_vectors(
        self, plan: ReadPlan, query: Item, task: str | None
    ) -> tuple[list[np.ndarray], dict[str, str] | None]:
        """One query vector per leg, each model embedding once per size; compensated legs mapped."""
        embedded: dict[tuple[str, int | None], np.ndarray] = {}
        template = None
        for leg in plan.legs:
            key = (leg.model, self._dimensions(leg))
            if key in embedded:
                continue
            if query.text is not None:
                spec = self.embedder.registry.get(leg.model)
                out = await self.embedder.embed_texts(
                    leg.model,
                    [query.text],
                    task=task_for(spec, task),
                    side=Side.query,
                    dimensions=key[1],
                    field="query.text",
                )
                embedded[key] = out.vectors[0]
                if template is None and out.template is not None:
                    template = {"task": out.template.task, "template": out.template.template}
            else:
                kind = "image" if query.image is not None else "video"
                where = f"query.{kind}"
                data = await media_bytes(
                    self.embedder.settings, kind, query.image or query.video or "", where
                )
                media = await self.embedder.embed_media(leg.model, kind, data, dimensions=key[1], field=where)
                embedded[key] = media.vector
        vectors = []
        for leg in plan.legs:
            vec = embedded[(leg.model, self._dimensions(leg))]
            if leg.compensator is not None:
                vec = await self.compensators.apply(leg.compensator, vec)
            vectors.append(vec)
        return vectors, template

    async def _once(
        self, tenant: str, name: str, query: Item, options: dict[str, Any], *, merge: bool, log_query: bool
    ) -> SearchResult:
        info = await asyncio.to_thread(self.store.load_collection, tenant, name)
        plan = read_plan(info, text=query.text is not None, merge=merge)
        if query.text is not None and log_query:
            self.querylog.remember(info, query.text)
        vectors, template = await self._leg_vectors(plan, query, options["task"])
        # fused scores are ranks, not similarities: a threshold applies to a single leg only
        threshold = options["score_threshold"] if len(plan.legs) == 1 else None
        lists = await asyncio.gather(
            *(
                asyncio.to_thread(
                    self.store.search,
                    tenant,
                    name,
                    vec,
                    top_k=options["top_k"],
                    filter=options["filter"],
                    with_payload=options["with_payload"],
                    score_threshold=threshold,
                    physical=leg.physical.name,
                )
                for leg, vec in zip(plan.legs, vectors, strict=True)
            )
        )
        hits = lists[0] if len(lists) == 1 else rrf(list(lists), options["top_k"])
        metrics.SEARCHES.labels(name, plan.path).inc()
        return SearchResult(hits, plan.model, template, plan.path)

    async def search(
        self,
        tenant: str,
        name: str,
        query: Item,
        *,
        task: str | None = None,
        top_k: int = 10,
        filter: Any = None,
        with_payload: bool = True,
        score_threshold: float | None = None,
        merge: bool = False,
    ) -> SearchResult:
        """Nearest documents to `query` along the collection's read plan; `merge` during a migration also
        searches the backfilled v2 points and fuses by rank."""
        options = {
            "task": task,
            "top_k": top_k,
            "filter": filter,
            "with_payload": with_payload,
            "score_threshold": score_threshold,
        }
        try:
            return await self._once(tenant, name, query, options, merge=merge, log_query=True)
        except StaleTarget:  # a physical of the snapshot was dropped meanwhile: the new plan avoids it
            return await self._once(tenant, name, query, options, merge=merge, log_query=False)
