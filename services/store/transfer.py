"""Copy every collection from one store backend to another, counts verified: how an existing local-mode
data directory (qdrant-client's `QdrantClient(path=...)`, the embedded store before Qdrant Edge) moves to
Edge, or an embedded store to a Qdrant server (`embedfleet store copy`).

Physical collections keep their names, specs (a BM25 sparse vector too) and payload indexes; points keep
their ids, dense and sparse vectors and payloads (tenant and doc-id keys included); collection records
(migration state too) and the query log are copied last, so the target serves a collection only once all
its vectors are there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from qdrant_client import models as qm

from services.errors import Conflict, Inconsistent
from services.store.backend import Backend, Page
from services.store.names import TENANT_KEY, meta_id
from services.store.records import CollectionInfo

log = logging.getLogger("embedfleet.store")
PAGE = 512
EVERYTHING = qm.Filter(must=[])


@dataclass
class CopyReport:
    collections: int = 0
    points: dict[str, int] = field(default_factory=dict)  # per physical collection, as counted in the target
    query_log: int = 0


def copy_store(src: Backend, dst: Backend, progress: Callable[[str, int], None] | None = None) -> CopyReport:
    """Copy everything; 409 if the target already has one of the collections (nothing is overwritten)."""
    records = src.meta_list(None)
    for doc in records:
        key = _key(doc)
        if dst.meta_get(key) is not None:
            raise Conflict(f"the target already has collection {doc['name']!r} of tenant {doc['tenant']!r}")
    report = CopyReport()
    for doc in records:
        info = CollectionInfo.from_payload(doc)
        for phys in info.physicals:
            dst.create(phys.name, phys.layout, {TENANT_KEY: "keyword", **info.indexes})
            copied, offset = 0, None
            while True:
                page, offset = src.scroll(phys.name, Page(EVERYTHING, PAGE, offset, True, True))
                dst.upsert(
                    phys.name, [(r.id, _vector(r.vector, phys.name), r.payload, r.sparse) for r in page]
                )
                copied += len(page)
                if progress is not None:
                    progress(phys.name, copied)
                if offset is None:
                    break
            counted = dst.count(phys.name, EVERYTHING)
            if counted != src.count(phys.name, EVERYTHING):
                raise Inconsistent(f"{phys.name}: {counted} points in the target after copying {copied}")
            report.points[phys.name] = counted
        dst.meta_put(_key(doc), info.tenant, doc)
        dst.set_alias(info.alias, info.physical)
        report.collections += 1
    for key, slot, text, at in src.log_entries():
        dst.log_put(key, slot, text, at)
        report.query_log += 1
    dst.flush()
    return report


def _key(doc: dict[str, object]) -> str:
    return meta_id(str(doc["tenant"]), str(doc["name"]))


def _vector(vector: list[float] | None, physical: str) -> np.ndarray:
    if vector is None:
        raise Inconsistent(f"{physical}: a point came back without its vector")
    return np.asarray(vector, dtype=np.float32)
