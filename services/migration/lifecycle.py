"""Model upgrades without downtime: sampling -> backfilling -> cutover -> done (or failed, cancelled,
rolled_back), with compensated reads on the old index while the backfill runs.

State lives in the collection's metadata slot (Qdrant), so every gateway replica and worker sees it.
- sampling: both models embed pseudo-queries (first sentences of sampled documents, rendered with the
  **query** template), the collection's logged query texts when it opted in (services.querylog) and the
  sampled documents; compensators are fitted on query pairs and scored on a held-out split against the
  documents' own vectors (MRR@10 with the source document as the label), which also decides the
  never-worse rule (v1 queries keep answering when no compensator beats them).
- backfilling: the source's points are re-embedded with v2 into a new physical collection, page by page
  with a persisted cursor, deterministic ids, on the batcher's backfill lane (capped at
  `backfill_share` of the encoder while online traffic is around). After each page the ids
  are re-checked against the source and any deleted meanwhile are removed again, so a backfill page never
  resurrects a delete, and pages whose documents were overwritten meanwhile are re-embedded. New writes go
  to every physical (services.migration.state.write_targets).
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
import uuid
from typing import TYPE_CHECKING, Any

import numpy as np

from services import metrics, querylog
from services.errors import Conflict, EncoderUnavailable, InvalidInput, Overloaded
from services.indexing import Document, embed_documents, task_for
from services.migration import drift
from services.migration.state import ACTIVE
from services.registry import Side
from services.store import CollectionInfo, StoredPoint

if TYPE_CHECKING:
    from services.runtime import Runtime

log = logging.getLogger("embedfleet.migration")
COMPENSATORS = ("none", "mean", "kernel", "procrustes", "linear", "mlp")
_SENTENCE = re.compile(r"(.+?[.!?])(\s|$)")
MIN_LOGGED_QUERIES = 50  # fewer logged texts than this are too few to be worth fitting on


def pseudo_query(text: str) -> str:
    """A document's first sentence: the query stand-in when no query log exists."""
    flat = " ".join(text.split())
    m = _SENTENCE.match(flat)
    return (m.group(1) if m else flat)[:300]


async def _save(rt: Runtime, tenant: str, name: str, mig: dict[str, Any], status: str | None = None) -> None:
    mig["updated_at"] = time.time()
    await asyncio.to_thread(rt.store.set_migration, tenant, name, mig, status)


async def start(
    rt: Runtime, tenant: str, name: str, to_model: str, compensator: str = "auto"
) -> dict[str, Any]:
    if compensator not in ("auto", *COMPENSATORS):
        raise InvalidInput(f"compensator must be auto or one of {COMPENSATORS}", field="compensator")
    info = await asyncio.to_thread(rt.store.load_collection, tenant, name)
    if info.migration and info.migration.get("state") in ACTIVE:
        raise Conflict(f"collection {name!r} is already migrating", field="to_model")
    spec = rt.embedder.spec(to_model, field="to_model")
    if spec.ref == f"{info.model}:{info.version}":
        raise InvalidInput(f"collection {name!r} already uses {spec.ref}", field="to_model")
    dims = min(info.dimension, spec.dimension) if spec.allows_dimensions(info.dimension) else spec.dimension
    phys = await asyncio.to_thread(rt.store.create_physical, tenant, name, spec.name, spec.version, dims)
    mig = {
        "id": uuid.uuid4().hex,
        "state": "sampling",
        "created_at": time.time(),
        "source": {"physical": info.physical, "model": info.model, "version": info.version},
        "target": phys.name,
        "to": {"model": spec.name, "version": spec.version, "dimension": dims},
        "compensator": {"requested": compensator},
        "backfill": {"done": 0, "total": None, "cursor": None},
    }
    await _save(rt, tenant, name, mig, "migrating")
    return mig


async def _sample(rt: Runtime, info: CollectionInfo, limit: int) -> tuple[list[str], np.ndarray]:
    """Up to `limit` documents with text sources and their stored v1 vectors."""
    texts: list[str] = []
    vecs: list[list[float]] = []
    offset = None
    while len(texts) < limit:
        page, offset = await asyncio.to_thread(
            rt.store.scroll,
            info.tenant,
            info.name,
            offset,
            256,
            None,
            True,
            True,
            info.migration["source"]["physical"],
        )
        for p in page:
            if p.source and "text" in p.source and p.vector is not None:
                texts.append(p.source["text"])
                vecs.append(p.vector)
        if offset is None:
            break
    return texts[:limit], np.asarray(vecs[:limit], dtype=np.float32)


async def fit(rt: Runtime, tenant: str, name: str) -> dict[str, Any]:
    info = await asyncio.to_thread(rt.store.load_collection, tenant, name)
    mig = dict(info.migration or {})
    source, to = mig["source"], mig["to"]
    texts, doc_old = await _sample(rt, info, rt.settings.migration_sample_size)
    if len(texts) < 20:
        mig["compensator"].update({"kind": "none", "note": f"only {len(texts)} text documents: no fit"})
        mig["use_v1"] = True
        return mig
    # held-out: labelled pseudo-queries (the document each was cut from); fitted: the other pseudo-queries
    # plus, when the collection opted in, its logged query texts (never evaluated on)
    logged = (
        await querylog.recall(rt, tenant, name, rt.settings.migration_sample_size) if info.query_log else []
    )
    if len(logged) < MIN_LOGGED_QUERIES:
        logged = []
    queries = [pseudo_query(t) for t in texts] + logged
    v1_spec, v2_spec = rt.registry.get(source["model"]), rt.registry.get(to["model"])
    q_old = (
        await rt.embedder.embed_texts(
            source["model"], queries, task=task_for(v1_spec, None), side=Side.query, lane="backfill"
        )
    ).vectors
    q_new = (
        await rt.embedder.embed_texts(
            to["model"], queries, task=task_for(v2_spec, None), side=Side.query, lane="backfill"
        )
    ).vectors
    target_info = info.physical_info(mig["target"])
    docs = [Document(id=str(i), text=t) for i, t in enumerate(texts)]
    doc_new = np.asarray(
        [p.vector for p in await embed_documents(rt, info, docs, lane="backfill", physical=target_info.name)],
        dtype=np.float32,
    )
    rng = np.random.default_rng(0)
    order = rng.permutation(len(texts))
    held = order[: max(10, len(order) // 5)]
    train = np.concatenate([order[len(held) :], np.arange(len(texts), len(queries))])
    requested = mig["compensator"]["requested"]
    candidates = [c for c in COMPENSATORS if c != "none"] if requested == "auto" else [requested]
    if requested == "none":
        candidates = ["none"]
    result = drift.fit_auto(
        drift.Pairs(q_new[train], q_old[train]),
        drift.Pairs(q_new[held], q_old[held]),
        candidates,
        corpus=drift.Pairs(doc_new, doc_old),
        relevant=held,
    )
    digest = await asyncio.to_thread(rt.blobs.put, result.best.save())
    mig["compensator"].update(
        {
            "kind": result.best.kind,
            "blob": digest,
            "report": result.report(),
            "pairs": {
                "train": len(train),
                "heldout": len(held),
                "pseudo_queries": len(texts) - len(held),
                "logged_queries": len(logged),
            },
        }
    )
    mig["use_v1"] = bool(result.use_v1)
    return mig


async def backfill_page(rt: Runtime, tenant: str, name: str, page_size: int = 64) -> bool:
    """Re-embed one page of the source into the target; True while pages remain. Idempotent: the cursor
    is saved after the page's points, so a redelivered step redoes at most one page (same ids)."""
    info = await asyncio.to_thread(rt.store.load_collection, tenant, name)
    mig = dict(info.migration or {})
    source = mig["source"]["physical"]
    bf = mig["backfill"]
    if bf.get("total") is None:  # counted once: an exact count per page would cost as much as the page
        bf["total"] = (await asyncio.to_thread(rt.store.get_collection, tenant, name)).points_count or 0
        bf["started_at"] = time.time()
    total = bf["total"]
    page, nxt = await asyncio.to_thread(
        rt.store.scroll, tenant, name, bf["cursor"], page_size, None, True, False, source
    )
    await copy_points(rt, info, page, source, mig["target"])
    bf["done"] = bf.get("done", 0) + len(page)
    bf["cursor"] = nxt
    elapsed = max(time.time() - bf["started_at"], 1e-6)
    bf["rate"] = bf["done"] / elapsed
    bf["eta_s"] = max(total - bf["done"], 0) / bf["rate"] if bf["rate"] else None
    metrics.MIGRATION_DOCUMENTS.labels(name).inc(len(page))
    metrics.MIGRATION_PROGRESS.labels(name).set(min(bf["done"] / total, 1.0) if total else 1.0)
    mig["backfill"] = bf
    current = await asyncio.to_thread(rt.store.load_collection, tenant, name)
    if (current.migration or {}).get("state") != "backfilling":
        return False  # cancelled meanwhile: do not overwrite its state
    await _save(rt, tenant, name, mig)
    log.info("migration %s/%s backfill %d/%d", tenant, name, bf["done"], total)
    return nxt is not None


async def copy_points(
    rt: Runtime, info: CollectionInfo, points: list[StoredPoint], src: str, dst: str
) -> None:
    """Re-embed `points` (read from `src`) into `dst` with dst's model, then make dst agree with what src
    holds now: a document deleted while the page was in flight is deleted again (never resurrected),
    one overwritten meanwhile is copied again from its new source (a writer's own write to dst may have
    landed before ours)."""
    for _ in range(3):
        docs = await source_documents(rt, points)
        if not docs:
            return
        vecs = await embed_documents(rt, info, docs, lane="backfill", physical=dst)
        await asyncio.to_thread(rt.store.upsert, info.tenant, info.name, vecs, dst)
        now = {
            p.id: p
            for p in await asyncio.to_thread(
                rt.store.get_points, info.tenant, info.name, [d.id for d in docs], False, src
            )
        }
        gone = [d.id for d in docs if d.id not in now]
        if gone:
            await asyncio.to_thread(rt.store.delete_points, info.tenant, info.name, gone, None, dst)
        was = {p.id: p for p in points}
        points = [p for i, p in now.items() if (p.source, p.payload) != (was[i].source, was[i].payload)]
        if not points:
            return


async def source_documents(rt: Runtime, points: list[StoredPoint]) -> list[Document]:
    """Rebuild documents from the sources stored with their points (text inline, media from the blob
    store): what both the backfill and the cutover's straggler pass re-embed."""
    docs = []
    for p in points:
        source = p.source or {}
        payload = p.payload or None
        if "text" in source:
            docs.append(Document(id=p.id, text=source["text"], payload=payload))
        for kind in ("image", "video"):
            if kind in source:
                data = await asyncio.to_thread(rt.blobs.get, source[kind])
                docs.append(Document(id=p.id, payload=payload, **{kind: base64.b64encode(data).decode()}))
    return docs


async def reconcile(rt: Runtime, info: CollectionInfo, src: str, dst: str) -> int:
    """Make `dst` hold exactly the documents of `src` (ids), re-embedding missing ones from their stored
    sources with dst's model; returns how many documents `src` has."""

    def ids(physical: str) -> set[str]:
        return {i for page in rt.store.scroll_ids(info.tenant, info.name, physical) for i in page}

    src_ids = await asyncio.to_thread(ids, src)
    dst_ids = await asyncio.to_thread(ids, dst)
    extra = sorted(dst_ids - src_ids)
    if extra:
        await asyncio.to_thread(rt.store.delete_points, info.tenant, info.name, extra, None, dst)
    missing = sorted(src_ids - dst_ids)
    if missing:
        points = await asyncio.to_thread(rt.store.get_points, info.tenant, info.name, missing, False, src)
        await copy_points(rt, info, points, src, dst)
    return len(src_ids)


async def cutover(rt: Runtime, tenant: str, name: str) -> None:
    """Switch when the target holds every live document (re-backfilling any stragglers first)."""
    info = await asyncio.to_thread(rt.store.load_collection, tenant, name)
    mig = dict(info.migration or {})
    live = await reconcile(rt, info, mig["source"]["physical"], mig["target"])
    # writes and deletes during the backfill move the goalposts: at cutover every live document is in
    mig["backfill"].update(done=live, total=live, eta_s=0)
    mig.update(state="done", cutover_at=time.time(), updated_at=time.time())
    # one metadata write: the live physical and the state move together (readers plan from it)
    await asyncio.to_thread(rt.store.switch_alias, tenant, name, mig["target"], mig, "ready")
    metrics.MIGRATION_PROGRESS.labels(name).set(1.0)
    log.info("migration %s/%s cutover complete: alias on %s", tenant, name, mig["to"]["model"])


async def step(rt: Runtime, tenant: str, name: str) -> float | None:
    """Advance one migration by one unit of work; the delay before the next step, or None when finished.

    The unit is small (a fit, one backfill page, the cutover, the grace-period drop) and resumable from
    the persisted state, so the same steps run in-process or as Celery tasks that a SIGKILL may repeat.
    Transient encoder errors propagate (the caller retries); anything else fails the migration.
    """
    info = await asyncio.to_thread(rt.store.load_collection, tenant, name)
    mig = dict(info.migration or {})
    state = mig.get("state")
    try:
        if state == "sampling":
            mig = await fit(rt, tenant, name)
            mig["state"] = "backfilling"
            await _save(rt, tenant, name, mig)
            return 0.0
        if state == "backfilling":
            if await backfill_page(rt, tenant, name):
                return 0.0
            info = await asyncio.to_thread(rt.store.load_collection, tenant, name)
            mig = dict(info.migration or {})
            if mig.get("state") == "backfilling":
                mig["state"] = "cutover"
                await _save(rt, tenant, name, mig)
            return 0.0
        if state == "cutover":
            await cutover(rt, tenant, name)
            return rt.settings.migration_grace_s
        if state == "done" and not mig.get("source_dropped"):
            left = mig["cutover_at"] + rt.settings.migration_grace_s - time.time()
            if left > 0:
                return left
            await asyncio.to_thread(rt.store.drop_physical, tenant, name, mig["source"]["physical"])
            mig["source_dropped"] = True
            await _save(rt, tenant, name, mig)
        return None
    except (EncoderUnavailable, Overloaded):
        raise
    except Exception as exc:
        mig["state"], mig["error"] = "failed", str(exc)[:500]
        await _save(rt, tenant, name, mig, "ready")
        return None


async def run_inprocess(rt: Runtime, tenant: str, name: str) -> None:
    """The embedded default: the same steps, in the gateway's own event loop."""
    attempt = 0
    while True:
        try:
            delay = await step(rt, tenant, name)
            attempt = 0
        except (EncoderUnavailable, Overloaded):
            attempt += 1
            delay = min(2.0**attempt, 30.0)
        if delay is None:
            return
        await asyncio.sleep(delay)


async def cancel(rt: Runtime, tenant: str, name: str) -> dict[str, Any]:
    info = await asyncio.to_thread(rt.store.load_collection, tenant, name)
    mig = dict(info.migration or {})
    if mig.get("state") not in ACTIVE:
        raise Conflict(f"collection {name!r} has no migration in progress", field="name")
    mig["state"] = "cancelled"
    await _save(rt, tenant, name, mig, "ready")
    await asyncio.to_thread(rt.store.drop_physical, tenant, name, mig["target"])
    return mig


async def rollback(rt: Runtime, tenant: str, name: str) -> dict[str, Any]:
    """Move reads back to v1. v1 was written alongside v2 since the cutover; a reconciliation catches
    anything that could not be (v1's model unserved for a while), then v2 is dropped."""
    info = await asyncio.to_thread(rt.store.load_collection, tenant, name)
    mig = dict(info.migration or {})
    if mig.get("state") != "done" or mig.get("source_dropped"):
        raise Conflict("rollback needs a finished migration whose v1 vectors still exist", field="name")
    source = mig["source"]["physical"]
    await reconcile(rt, info, mig["target"], source)
    mig.update(state="rolled_back", rolled_back_at=time.time(), updated_at=time.time())
    await asyncio.to_thread(rt.store.switch_alias, tenant, name, source, mig)
    await asyncio.to_thread(rt.store.drop_physical, tenant, name, mig["target"])
    log.info("migration %s/%s rolled back: alias on %s", tenant, name, mig["source"]["model"])
    return mig


def public(mig: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the API shows: no Qdrant names."""
    if mig is None:
        return None
    bf = mig.get("backfill", {})
    total = bf.get("total")
    return {
        "id": mig.get("id"),
        "state": mig.get("state"),
        "from": {k: mig["source"][k] for k in ("model", "version")},
        "to": mig.get("to"),
        "compensator": {k: v for k, v in mig.get("compensator", {}).items() if k != "blob"},
        "reads_use_v1": mig.get("use_v1"),
        "progress": {
            "done": bf.get("done", 0),
            "total": total,
            "ratio": (bf.get("done", 0) / total) if total else None,
            "rate": bf.get("rate"),
            "eta_s": bf.get("eta_s"),
        },
        "error": mig.get("error"),
    }
