"""Documents into a collection: one code path for synchronous requests, in-process jobs and Celery.

Documents are embedded with each physical collection's own model on the template's passage side and
upserted with point ids derived from (tenant, collection, doc id), so a retried chunk rewrites the same
points and never duplicates. The source needed to re-embed later (model upgrades) is kept: text in the
point, images and videos in the content-addressed blob store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import asdict, dataclass
from typing import Any

from services.blobs import BlobStore
from services.embedder import Embedder
from services.errors import InvalidInput, StaleTarget, Transient
from services.migration.state import write_targets
from services.multimodal import media_bytes
from services.registry import ModelSpec, Side
from services.store import CollectionInfo, PointIn, VectorStore
from services.store.bm25 import bm25_document

log = logging.getLogger("embedfleet.indexing")
DOC_TASK = "retrieval"
REPLANS = 4  # snapshots a write may see change under it before it gives up (retryable)


@dataclass(frozen=True)
class Document:
    """One document to index: an id, exactly one of text / image / video (base64 or data URI), a payload.
    The gateway's wire model (gateway/schemas) validates requests and converts to this."""

    id: str
    text: str | None = None
    image: str | None = None
    video: str | None = None
    payload: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.text, self.image, self.video)) != 1:
            raise InvalidInput("a document has exactly one of text, image, video", field="documents")

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def check_unique(docs: list[Document]) -> None:
    seen: set[str] = set()
    for i, d in enumerate(docs):
        if d.id in seen:
            raise InvalidInput(f"document id {d.id!r} appears twice", field=f"documents[{i}].id")
        seen.add(d.id)


def task_for(spec: ModelSpec, task: str | None) -> str | None:
    """The retrieval family when the model has one; otherwise its default templates."""
    if task is not None:
        return task
    return DOC_TASK if DOC_TASK in spec.templates else None


async def embed_documents(
    embedder: Embedder,
    blobs: BlobStore,
    info: CollectionInfo,
    docs: list[Document],
    *,
    lane: str,
    physical: str | None = None,
    field: str = "documents",
) -> list[PointIn]:
    """Vectors and stored sources for `docs`, with the model of `physical` (default: the live one)."""
    phys = info.physical_info(physical) if physical else info.current
    spec = embedder.registry.get(phys.model)
    dims = phys.dimension if phys.dimension != spec.dimension else None
    texts = [d for d in docs if d.text is not None]
    points: dict[str, PointIn] = {}
    if texts:
        out = await embedder.embed_texts(
            phys.model,
            [d.text or "" for d in texts],
            task=task_for(spec, None),
            side=Side.document,
            dimensions=dims,
            lane=lane,
            field=field,
        )
        bm25 = phys.sparse == "bm25"
        for d, vec in zip(texts, out.vectors, strict=True):
            sparse = bm25_document(d.text or "") if bm25 else None
            points[d.id] = PointIn(d.id, vec, d.payload, {"text": d.text}, sparse)
    for i, d in enumerate(docs):
        if d.text is not None:
            continue
        kind = "image" if d.image is not None else "video"
        where = f"{field}[{i}].{kind}"
        data = await media_bytes(embedder.settings, kind, d.image or d.video or "", where)
        media = await embedder.embed_media(
            phys.model, kind, data, dimensions=dims, lane=lane, field=where, task=task_for(spec, None)
        )
        digest = await asyncio.to_thread(blobs.put, data)
        points[d.id] = PointIn(d.id, media.vector, d.payload, {kind: digest})
    return [points[d.id] for d in docs]


async def index_documents(
    embedder: Embedder,
    store: VectorStore,
    blobs: BlobStore,
    tenant: str,
    name: str,
    docs: list[Document],
    *,
    lane: str = "online",
    physical: str | None = None,
) -> int:
    """Embed and upsert into every physical collection the collection has (services.migration.state
    .write_targets), each with its own model; `physical` writes one (the backfill's target).

    After writing, the metadata is read again: a migration that started, or a cutover or rollback that
    happened while the documents were being embedded, shows up as a target not yet written, which is
    then written too. Point ids are deterministic, so a document lands once in each, whatever the race.
    """
    check_unique(docs)
    written: set[str] = set()
    for _ in range(REPLANS):
        info = await asyncio.to_thread(store.load_collection, tenant, name)
        targets = [info.physical_info(physical)] if physical else list(write_targets(info))
        todo = [p for p in targets if p.name not in written]
        if not todo:
            return len(docs)
        for phys in todo:
            written.add(phys.name)
            if phys.name != info.physical and phys.model not in embedder.served:
                log.warning(
                    "%s/%s: %s is not served; %s keeps no copy of this write",
                    tenant,
                    name,
                    phys.model,
                    phys.name,
                )
                continue
            points = await embed_documents(embedder, blobs, info, docs, lane=lane, physical=phys.name)
            with contextlib.suppress(StaleTarget):  # dropped since the snapshot: nothing to keep there
                await asyncio.to_thread(store.upsert, tenant, name, points, phys.name)
        if physical:
            return len(docs)
    raise Transient(f"collection {name!r} kept changing while documents were written; retry", retry_after=1)
