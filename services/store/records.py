"""What the store records and returns: documents in, points out, collections and their physicals.

A collection (tenant, name) is served by one **physical** collection (the vectors of one model
version) at a time; a model upgrade builds a second one and switches at cutover, keeping the old one
for rollback. `CollectionInfo` is the metadata record of all that, written in one piece, so a reader
holding one always sees a consistent collection (services.migration.state plans from it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import numpy as np

from services.errors import StaleTarget

Sparse = tuple[list[int], list[float]]
"""A sparse vector as (indices, values): what `services.store.bm25_document` / `bm25_query` return."""
SPARSE_KINDS: tuple[str, ...] = ("none", "bm25")


class PointIn(NamedTuple):
    """One document to write. `source` is what re-embedding needs: {"text": str} or {"image": digest}.
    `sparse` is the document's BM25 vector (`bm25_document(text)`), for collections whose layout has
    `sparse="bm25"`; None writes the point without one (sparse and hybrid search then never find it)."""

    doc_id: str
    vector: Sequence[float] | np.ndarray
    payload: Mapping[str, Any] | None = None
    source: Mapping[str, Any] | None = None
    sparse: tuple[Sequence[int], Sequence[float]] | None = None


@dataclass(frozen=True)
class StoredPoint:
    """A point as callers see it: their doc id and payload, never the reserved keys."""

    id: str
    payload: dict[str, Any]
    source: dict[str, Any] | None = None
    score: float | None = None
    vector: list[float] | None = None
    sparse: Sparse | None = None  # with vectors asked, on a bm25 collection, for points that have one


@dataclass(frozen=True)
class Layout:
    """What a physical collection holds (one model version's vectors) and how it stores them.

    `sparse="bm25"` adds a sparse vector named `bm25` with the IDF modifier beside the dense one: what
    `VectorStore.search(mode="sparse" | "hybrid")` needs."""

    model: str
    version: str
    dimension: int
    distance: str = "cosine"
    on_disk: bool = False
    quantization: str = "none"
    sparse: str = "none"


@dataclass(frozen=True)
class PhysicalInfo:
    """One physical Qdrant collection: the vectors of one model version."""

    name: str
    model: str
    version: str
    dimension: int
    distance: str
    on_disk: bool
    quantization: str
    created_at: str
    sparse: str = "none"  # records written before sparse vectors existed have none

    @property
    def layout(self) -> Layout:
        return Layout(
            self.model,
            self.version,
            self.dimension,
            self.distance,
            self.on_disk,
            self.quantization,
            self.sparse,
        )


@dataclass(frozen=True)
class CollectionInfo:
    """What the metadata collection records about (tenant, name).

    `status` is "ready" or whatever the migration lifecycle sets ("migrating"); `migration` is its
    opaque state slot; `points_count` is filled only by `get_collection`.
    """

    tenant: str
    name: str
    alias: str
    physical: str
    physicals: tuple[PhysicalInfo, ...]
    created_at: str
    status: str = "ready"
    indexes: dict[str, str] = field(default_factory=dict)
    migration: dict[str, Any] | None = None
    points_count: int | None = None
    query_log: bool = False  # opted in to keeping a sample of its query texts (migration fitting only)

    @property
    def current(self) -> PhysicalInfo:
        return self.physical_info(self.physical)

    def physical_info(self, physical: str) -> PhysicalInfo:
        for p in self.physicals:
            if p.name == physical:
                return p
        # physical names never come from callers: one missing from this record was dropped after the
        # caller's snapshot (or belongs to another collection): a 404 that plan followers retry
        missing = f"collection {self.name!r} has no physical collection {physical!r}"
        raise StaleTarget(missing, field="physical")

    @property
    def model(self) -> str:
        return self.current.model

    @property
    def version(self) -> str:
        return self.current.version

    @property
    def dimension(self) -> int:
        return self.current.dimension

    @property
    def distance(self) -> str:
        return self.current.distance

    def public(self) -> dict[str, Any]:
        """The fields an API may show its tenant: no Qdrant names, no migration internals."""
        cur = self.current
        return {
            "name": self.name,
            "model": cur.model,
            "version": cur.version,
            "dimension": cur.dimension,
            "distance": cur.distance,
            "on_disk": cur.on_disk,
            "quantization": cur.quantization,
            "sparse": cur.sparse,
            "status": self.status,
            "created_at": self.created_at,
            "points_count": self.points_count,
            "query_log": self.query_log,
        }

    def to_payload(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "name": self.name,
            "alias": self.alias,
            "physical": self.physical,
            "physicals": [asdict(p) for p in self.physicals],
            "created_at": self.created_at,
            "status": self.status,
            "indexes": dict(self.indexes),
            "migration": self.migration,
            "query_log": self.query_log,
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> CollectionInfo:
        return cls(
            tenant=payload["tenant"],
            name=payload["name"],
            alias=payload["alias"],
            physical=payload["physical"],
            physicals=tuple(PhysicalInfo(**p) for p in payload["physicals"]),
            created_at=payload["created_at"],
            status=payload.get("status", "ready"),
            indexes=dict(payload.get("indexes") or {}),
            migration=payload.get("migration"),
            query_log=bool(payload.get("query_log", False)),
        )
