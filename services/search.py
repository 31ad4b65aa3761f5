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
from services.errors import InvalidInput, StaleTarget
from services.indexing import task_for
from services.migration import drift
from services.migration.state import Leg, ReadPlan, read_plan
from services.multimodal import Item, embed_query
from services.querylog import QueryLog
from services.registry import Kind, Side
from services.store import Fusion, Mode, StoredPoint, VectorStore
from services.store.bm25 import bm25_query


@dataclass(frozen=True)
class SearchOptions:
    """What a search asks for besides the query. `mode` sparse/hybrid need a `sparse: bm25` collection
    and a query text; `diversity` is MMR over `candidates`; `rerank_model` reorders the top_k hits by a
    cross-encoder over their stored texts and keeps `rerank_top_n`."""

    task: str | None = None
    top_k: int = 10
    filter: Any = None
    with_payload: bool = True
    score_threshold: float | None = None
    mode: Mode = "dense"
    fusion: Fusion | None = None
    weights: tuple[float, float] | None = None
    diversity: float | None = None
    candidates: int | None = None
    rerank_model: str | None = None
    rerank_top_n: int | None = None


@dataclass(frozen=True)
class SearchResult:
    hits: list[StoredPoint]
    model: str
    template: dict[str, str] | None
    path: str  # raw | compensated | merged | v1_fallback
    reranked_by: str | None = None


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
        self,
        embedder: Embedder,
        store: VectorStore,
        querylog: QueryLog,
        compensators: Compensators,
        max_candidates: int = 1000,
    ):
        self.embedder = embedder
        self.store = store
        self.querylog = querylog
        self.compensators = compensators
        self.max_candidates = max_candidates

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
            spec = self.embedder.registry.get(leg.model)
            if query.text is not None and query.is_text:
                out = await self.embedder.embed_texts(
                    leg.model,
                    [query.text],
                    task=task_for(spec, task),
                    side=Side.query,
                    dimensions=key[1],
                    field="query.text",
                )
                embedded[key], used = out.vectors[0], out.template
            else:  # media, or text with media (a composed query): services.multimodal
                embedded[key], used = await embed_query(
                    self.embedder, leg.model, query, task_for(spec, task), key[1]
                )
            if template is None and used is not None:
                template = {"task": used.task, "template": used.template}
        vectors = []
        for leg in plan.legs:
            vec = embedded[(leg.model, self._dimensions(leg))]
            if leg.compensator is not None:
                vec = await self.compensators.apply(leg.compensator, vec)
            vectors.append(vec)
        return vectors, template

    async def _once(
        self, tenant: str, name: str, query: Item, opts: SearchOptions, *, merge: bool, log_query: bool
    ) -> SearchResult:
        info = await asyncio.to_thread(self.store.load_collection, tenant, name)
        plan = read_plan(info, text=query.is_text, merge=merge)
        if query.text is not None and log_query:
            self.querylog.remember(info, query.text)
        if opts.mode == "sparse":  # no query embedding: BM25 on the physical the plan reads
            vectors: list[np.ndarray | None] = [None] * len(plan.legs)
            template = None
        else:  # the dense side follows the read plan (compensated during a migration)
            dense, template = await self._leg_vectors(plan, query, opts.task)
            vectors = list(dense)
        sparse = bm25_query(query.text) if opts.mode != "dense" and query.text is not None else None
        # fused scores are ranks, not similarities: a threshold applies to a single leg only
        threshold = opts.score_threshold if len(plan.legs) == 1 else None
        lists = await asyncio.gather(
            *(
                asyncio.to_thread(
                    self.store.search,
                    tenant,
                    name,
                    vec,
                    top_k=opts.top_k,
                    filter=opts.filter,
                    with_payload=opts.with_payload or opts.rerank_model is not None,
                    score_threshold=threshold,
                    physical=leg.physical.name,
                    mode=opts.mode,
                    sparse_query=sparse,
                    fusion=opts.fusion,
                    weights=opts.weights,
                    diversity=opts.diversity,
                    candidates=opts.candidates,
                )
                for leg, vec in zip(plan.legs, vectors, strict=True)
            )
        )
        hits = lists[0] if len(lists) == 1 else rrf(list(lists), opts.top_k)
        if opts.rerank_model is not None:
            hits = await self._rerank(query, hits, opts)
        metrics.SEARCHES.labels(name, plan.path).inc()
        return SearchResult(hits, plan.model, template, plan.path, opts.rerank_model)

    async def _rerank(self, query: Item, hits: list[StoredPoint], opts: SearchOptions) -> list[StoredPoint]:
        """The hits reordered by the cross-encoder's relevance of each stored text to the query text;
        scores become the cross-encoder's."""
        assert opts.rerank_model is not None
        if query.text is None:
            raise InvalidInput("reranking needs query.text", field="rerank")
        texts = [(h.source or {}).get("text") for h in hits]
        if any(t is None for t in texts):
            raise InvalidInput("reranking needs text documents (a hit has no stored text)", field="rerank")
        if not hits:
            return hits
        scored = await self.embedder.score_pairs(opts.rerank_model, query.text, [str(t) for t in texts])
        order = np.argsort(-scored.scores, kind="stable")[: opts.rerank_top_n or len(hits)]
        keep = [replace(hits[i], score=float(scored.scores[i])) for i in order.tolist()]
        if not opts.with_payload:
            keep = [replace(h, payload={}, source=None) for h in keep]
        return keep

    def check(self, opts: SearchOptions) -> None:
        """What the store cannot know: the settings' bound on candidates, a reranker that exists."""
        if opts.candidates is not None and opts.candidates > self.max_candidates:
            raise InvalidInput(f"candidates must be at most {self.max_candidates}", field="candidates")
        if opts.rerank_model is not None:
            spec = self.embedder.spec(opts.rerank_model, field="rerank.model")
            if spec.kind is not Kind.cross_encoder:
                raise InvalidInput(f"model {spec.name} is not a cross-encoder", field="rerank.model")

    async def search(
        self, tenant: str, name: str, query: Item, opts: SearchOptions, *, merge: bool = False
    ) -> SearchResult:
        """Nearest documents to `query` along the collection's read plan; `merge` during a migration also
        searches the backfilled v2 points and fuses by rank."""
        self.check(opts)
        try:
            return await self._once(tenant, name, query, opts, merge=merge, log_query=True)
        except StaleTarget:  # a physical of the snapshot was dropped meanwhile: the new plan avoids it
            return await self._once(tenant, name, query, opts, merge=merge, log_query=False)
