"""Model upgrades without downtime: sampling -> backfilling -> cutover -> done (or failed, cancelled,
rolled_back), with compensated reads on the old index while the backfill runs.

The typed record (services.migration.state.Migration) lives in the collection's metadata slot, so every
gateway replica and worker sees it.
- sampling: both models embed pseudo-queries (first sentences of sampled documents, rendered with the
  **query** template), the collection's logged query texts when it opted in (services.querylog) and the
  sampled documents; compensators are fitted on query pairs and scored on a held-out split against the
  documents' own vectors (MRR@10 with the source document as the label), which also decides the
  never-worse rule (v1 queries keep answering when no compensator beats them).
- backfilling: the source's points are re-embedded with v2 into a new physical collection, page by page
  with a persisted cursor, deterministic ids, on the batcher's backfill lane (capped at
  `backfill_share` of the encoder while online traffic is around). After each page the ids are re-checked
  against the source: a document deleted meanwhile is removed again (a backfill never resurrects a
  delete), one overwritten meanwhile is copied again. New writes go to every physical
  (services.migration.state.write_targets).
- cutover: when the target holds every live document, the live physical and the migration state change
  in one metadata write (readers plan from it); v1 is kept, and still written, for `migration_grace_s`
  so `rollback` can move back with nothing lost; rollback reconciles v1 with v2 the same way first and
  then drops v2.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from services import metrics
from services.blobs import BlobStore
from services.config import Settings
from services.embedder import Embedder
from services.errors import Conflict, InvalidInput, Transient
from services.indexing import Document, embed_documents, task_for
from services.migration import drift
from services.migration.state import Backfill, Migration, State, migration_of
from services.querylog import QueryLog
from services.registry import Side
from services.store import CollectionInfo, StoredPoint, VectorStore

log = logging.getLogger("embedfleet.migration")
COMPENSATORS = ("none", "mean", "kernel", "procrustes", "linear", "mlp")
_SENTENCE = re.compile(r"(.+?[.!?])(\s|$)")
MIN_LOGGED_QUERIES = 50  # fewer logged texts than this are too few to be worth fitting on
PAGE = 64


def pseudo_query(text: str) -> str:
    """A document's first sentence: the query stand-in when no query log exists."""
    flat = " ".join(text.split())
    m = _SENTENCE.match(flat)
    return (m.group(1) if m else flat)[:300]


async def source_documents(blobs: BlobStore, points: list[StoredPoint]) -> list[Document]:
    """Rebuild documents from the sources stored with their points (text inline, media from the blob
    store): what the backfill, the cutover's straggler pass and a rollback re-embed."""
    docs = []
    for p in points:
        source = p.source or {}
        payload = p.payload or None
        if "text" in source:
            docs.append(Document(id=p.id, text=source["text"], payload=payload))
        for kind in ("image", "video"):
            if kind in source:
                data = await asyncio.to_thread(blobs.get, source[kind])
                media = base64.b64encode(data).decode()
                docs.append(Document(id=p.id, payload=payload, **{kind: media}))
    return docs


class Migrations:
    """The upgrade steps of every collection, over the parts they use."""

    def __init__(
        self, settings: Settings, embedder: Embedder, store: VectorStore, blobs: BlobStore, querylog: QueryLog
    ) -> None:
        self.settings = settings
        self.embedder = embedder
        self.store = store
        self.blobs = blobs
        self.querylog = querylog

    # --- the record -------------------------------------------------------------------------------
    async def _load(self, tenant: str, name: str) -> tuple[CollectionInfo, Migration]:
        info = await asyncio.to_thread(self.store.load_collection, tenant, name)
        mig = migration_of(info)
        if mig is None:
            raise Conflict(f"collection {name!r} has no migration", field="name")
        return info, mig

    async def get(self, tenant: str, name: str) -> Migration | None:
        return migration_of(await asyncio.to_thread(self.store.load_collection, tenant, name))

    async def _save(self, tenant: str, name: str, mig: Migration, status: str | None = None) -> None:
        """Write `mig` unless the stored record moved on meanwhile (another migration, or a cancel,
        failure or rollback of this one): a step never writes its stale view over a newer state."""

        def moved_on(current: Mapping[str, Any] | None) -> str | None:
            if current is None or current.get("id") != mig.id:
                return "the migration was replaced meanwhile"
            if current.get("state") in (State.cancelled, State.failed, State.rolled_back) and current.get(
                "state"
            ) != str(mig.state):
                return f"the migration is {current.get('state')}"
            return None

        await asyncio.to_thread(self.store.set_migration, tenant, name, mig.to_dict(), status, moved_on)

    # --- start ------------------------------------------------------------------------------------
    async def start(
        self, tenant: str, name: str, to_model: str, compensator: str = "auto", sparse: str | None = None
    ) -> Migration:
        """A migration to `to_model`, or to the same model with another `sparse` layout (an existing
        collection gains BM25 vectors by the same backfill, reads staying on the old physical meanwhile)."""
        if compensator not in ("auto", *COMPENSATORS):
            raise InvalidInput(f"compensator must be auto or one of {COMPENSATORS}", field="compensator")
        info = await asyncio.to_thread(self.store.load_collection, tenant, name)
        current = migration_of(info)
        if current is not None and current.active:
            raise Conflict(f"collection {name!r} is already migrating", field="to_model")
        spec = self.embedder.spec(to_model, field="to_model")
        new_sparse = info.current.sparse if sparse is None else sparse
        if spec.ref == f"{info.model}:{info.version}" and new_sparse == info.current.sparse:
            raise InvalidInput(f"collection {name!r} already uses {spec.ref}", field="to_model")
        dims = (
            min(info.dimension, spec.dimension) if spec.allows_dimensions(info.dimension) else spec.dimension
        )
        layout = replace(
            info.current.layout, model=spec.name, version=spec.version, dimension=dims, sparse=new_sparse
        )
        phys = await asyncio.to_thread(self.store.create_physical, tenant, name, layout)
        mig = Migration.new(info, phys, compensator)
        await asyncio.to_thread(self.store.set_migration, tenant, name, mig.to_dict(), "migrating")
        return mig

    # --- sampling: fit the compensator ---------------------------------------------------------------
    async def _sample(self, info: CollectionInfo, source: str, limit: int) -> tuple[list[str], np.ndarray]:
        """Up to `limit` documents with text sources and their stored v1 vectors."""
        texts: list[str] = []
        vecs: list[list[float]] = []
        offset = None
        while len(texts) < limit:
            page, offset = await asyncio.to_thread(
                self.store.scroll, info.tenant, info.name, offset, 256, None, True, True, source
            )
            for p in page:
                if p.source and "text" in p.source and p.vector is not None:
                    texts.append(p.source["text"])
                    vecs.append(p.vector)
            if offset is None:
                break
        return texts[:limit], np.asarray(vecs[:limit], dtype=np.float32)

    async def _embed_queries(self, model: str, queries: list[str]) -> np.ndarray:
        spec = self.embedder.registry.get(model)
        out = await self.embedder.embed_texts(
            model, queries, task=task_for(spec, None), side=Side.query, lane="backfill"
        )
        return out.vectors

    async def fit(self, tenant: str, name: str) -> Migration:
        info, mig = await self._load(tenant, name)
        if mig.to == mig.source:  # a layout change: the old physical answers the same queries exactly
            note = "same model (a layout change): reads stay on the old physical, uncompensated"
            return replace(mig, compensator=replace(mig.compensator, kind="none", note=note), use_v1=True)
        size = self.settings.migration_sample_size
        texts, doc_old = await self._sample(info, mig.source_physical, size)
        if len(texts) < 20:
            note = f"only {len(texts)} text documents: no fit"
            return replace(mig, compensator=replace(mig.compensator, kind="none", note=note), use_v1=True)
        # held-out: labelled pseudo-queries (the document each was cut from); fitted: the other
        # pseudo-queries plus, when the collection opted in, its logged query texts (never evaluated on)
        logged = await self.querylog.recall(tenant, name, size) if info.query_log else []
        if len(logged) < MIN_LOGGED_QUERIES:
            logged = []
        queries = [pseudo_query(t) for t in texts] + logged
        q_old = await self._embed_queries(mig.source.model, queries)
        q_new = await self._embed_queries(mig.to.model, queries)
        docs = [Document(id=str(i), text=t) for i, t in enumerate(texts)]
        points = await embed_documents(
            self.embedder, self.blobs, info, docs, lane="backfill", physical=mig.target
        )
        doc_new = np.asarray([p.vector for p in points], dtype=np.float32)
        order = np.random.default_rng(0).permutation(len(texts))
        held = order[: max(10, len(order) // 5)]
        train = np.concatenate([order[len(held) :], np.arange(len(texts), len(queries))])
        requested = mig.compensator.requested
        candidates = {"auto": [c for c in COMPENSATORS if c != "none"]}.get(requested, [requested])
        result = drift.fit_auto(
            drift.Pairs(q_new[train], q_old[train]),
            drift.Pairs(q_new[held], q_old[held]),
            candidates,
            corpus=drift.Pairs(doc_new, doc_old),
            relevant=held,
        )
        digest = await asyncio.to_thread(self.blobs.put, result.best.save())
        pairs = {
            "train": len(train),
            "heldout": len(held),
            "pseudo_queries": len(texts) - len(held),
            "logged_queries": len(logged),
        }
        compensation = replace(
            mig.compensator, kind=result.best.kind, blob=digest, report=result.report(), pairs=pairs
        )
        return replace(mig, compensator=compensation, use_v1=bool(result.use_v1))

    # --- backfilling ---------------------------------------------------------------------------------
    async def backfill_page(self, tenant: str, name: str, page_size: int = PAGE) -> bool:
        """Re-embed one page of the source into the target; True while pages remain. Idempotent: the cursor
        is saved after the page's points, so a redelivered step redoes at most one page (same ids)."""
        info, mig = await self._load(tenant, name)
        bf = mig.backfill
        if bf.total is None:  # counted once: an exact count per page would cost as much as the page
            total = (await asyncio.to_thread(self.store.get_collection, tenant, name)).points_count or 0
            bf = replace(bf, total=total, started_at=time.time())
        page, nxt = await asyncio.to_thread(
            self.store.scroll, tenant, name, bf.cursor, page_size, None, True, False, mig.source_physical
        )
        await self.copy_points(info, page, mig.source_physical, mig.target)
        done = bf.done + len(page)
        rate = done / max(time.time() - (bf.started_at or time.time()), 1e-6)
        total = bf.total or 0
        bf = replace(
            bf, done=done, cursor=nxt, rate=rate, eta_s=max(total - done, 0) / rate if rate else None
        )
        metrics.MIGRATION_DOCUMENTS.labels(name).inc(len(page))
        metrics.MIGRATION_PROGRESS.labels(name).set(min(done / total, 1.0) if total else 1.0)
        await self._save(tenant, name, mig.but(backfill=bf))
        log.info("migration %s/%s backfill %d/%d", tenant, name, done, total)
        return nxt is not None

    async def copy_points(self, info: CollectionInfo, points: list[StoredPoint], src: str, dst: str) -> None:
        """Re-embed `points` (read from `src`) into `dst` with dst's model, then make dst agree with what
        src holds now: a document deleted while the page was in flight is deleted again (never
        resurrected), one overwritten meanwhile is copied again from its new source (a writer's own write
        to dst may have landed before ours)."""
        for _ in range(3):
            docs = await source_documents(self.blobs, points)
            if not docs:
                return
            vecs = await embed_documents(self.embedder, self.blobs, info, docs, lane="backfill", physical=dst)
            await asyncio.to_thread(self.store.upsert, info.tenant, info.name, vecs, dst)
            ids = [d.id for d in docs]
            now = {
                p.id: p
                for p in await asyncio.to_thread(
                    self.store.get_points, info.tenant, info.name, ids, False, src
                )
            }
            gone = [i for i in ids if i not in now]
            if gone:
                await asyncio.to_thread(self.store.delete_points, info.tenant, info.name, gone, None, dst)
            was = {p.id: p for p in points}
            points = [p for i, p in now.items() if (p.source, p.payload) != (was[i].source, was[i].payload)]
            if not points:
                return

    async def reconcile(self, info: CollectionInfo, src: str, dst: str) -> int:
        """Make `dst` hold exactly the documents of `src` (ids), re-embedding missing ones from their
        stored sources with dst's model; returns how many documents `src` has."""

        def ids(physical: str) -> set[str]:
            return {i for page in self.store.scroll_ids(info.tenant, info.name, physical) for i in page}

        src_ids = await asyncio.to_thread(ids, src)
        dst_ids = await asyncio.to_thread(ids, dst)
        extra = sorted(dst_ids - src_ids)
        if extra:
            await asyncio.to_thread(self.store.delete_points, info.tenant, info.name, extra, None, dst)
        missing = sorted(src_ids - dst_ids)
        if missing:
            points = await asyncio.to_thread(
                self.store.get_points, info.tenant, info.name, missing, False, src
            )
            await self.copy_points(info, points, src, dst)
        return len(src_ids)

    # --- cutover, rollback, cancel -------------------------------------------------------------------
    async def cutover(self, tenant: str, name: str) -> None:
        """Switch when the target holds every live document (re-backfilling any stragglers first)."""
        info, mig = await self._load(tenant, name)
        live = await self.reconcile(info, mig.source_physical, mig.target)
        # writes and deletes during the backfill move the goalposts: at cutover every live document is in
        bf = replace(mig.backfill, done=live, total=live, eta_s=0)
        done = mig.but(state=State.done, backfill=bf, cutover_at=time.time())
        # one metadata write: the live physical and the state move together (readers plan from it)
        await asyncio.to_thread(self.store.switch_alias, tenant, name, mig.target, done.to_dict(), "ready")
        metrics.MIGRATION_PROGRESS.labels(name).set(1.0)
        log.info("migration %s/%s cutover complete: alias on %s", tenant, name, mig.to.model)

    async def rollback(self, tenant: str, name: str) -> Migration:
        """Move reads back to v1. v1 was written alongside v2 since the cutover; a reconciliation catches
        anything that could not be (v1's model unserved for a while), then v2 is dropped."""
        info, mig = await self._load(tenant, name)
        if mig.state is not State.done or mig.source_dropped:
            raise Conflict("rollback needs a finished migration whose v1 vectors still exist", field="name")
        await self.reconcile(info, mig.target, mig.source_physical)
        back = mig.but(state=State.rolled_back, rolled_back_at=time.time())
        await asyncio.to_thread(self.store.switch_alias, tenant, name, mig.source_physical, back.to_dict())
        await asyncio.to_thread(self.store.drop_physical, tenant, name, mig.target)
        log.info("migration %s/%s rolled back: alias on %s", tenant, name, mig.source.model)
        return back

    async def cancel(self, tenant: str, name: str) -> Migration:
        _, mig = await self._load(tenant, name)
        if not mig.active:
            raise Conflict(f"collection {name!r} has no migration in progress", field="name")
        cancelled = mig.but(state=State.cancelled)
        await asyncio.to_thread(self.store.set_migration, tenant, name, cancelled.to_dict(), "ready")
        await asyncio.to_thread(self.store.drop_physical, tenant, name, mig.target)
        return cancelled

    # --- the step machine ----------------------------------------------------------------------------
    async def step(self, tenant: str, name: str) -> float | None:
        """Advance one migration by one unit of work; the delay before the next step, or None when done.

        The unit is small (a fit, one backfill page, the cutover, the grace-period drop) and resumable
        from the persisted record, so the same steps run in-process or as Celery tasks that a SIGKILL may
        repeat. Transient errors propagate (the dispatcher retries); a 409 means the record moved on (a
        cancel or rollback) and ends the steps; anything else fails the migration.
        """
        _, mig = await self._load(tenant, name)
        try:
            if mig.state is State.sampling:
                fitted = await self.fit(tenant, name)
                await self._save(tenant, name, fitted.but(state=State.backfilling, backfill=Backfill()))
                return 0.0
            if mig.state is State.backfilling:
                if not await self.backfill_page(tenant, name):
                    _, mig = await self._load(tenant, name)
                    await self._save(tenant, name, mig.but(state=State.cutover))
                return 0.0
            if mig.state is State.cutover:
                await self.cutover(tenant, name)
                return self.settings.migration_grace_s
            if mig.state is State.done and not mig.source_dropped:
                left = (mig.cutover_at or 0.0) + self.settings.migration_grace_s - time.time()
                if left > 0:
                    return left
                await asyncio.to_thread(self.store.drop_physical, tenant, name, mig.source_physical)
                await self._save(tenant, name, mig.but(source_dropped=True))
            return None
        except (Transient, Conflict):
            raise
        except Exception as exc:
            log.exception("migration %s/%s failed", tenant, name)
            await self._save(tenant, name, mig.but(state=State.failed, error=str(exc)[:500]), "ready")
            return None
