"""Vectors and collection records: one `VectorStore` over one of two engines.

- **Qdrant Edge** (embedded default, `EdgeBackend`): Qdrant's own engine under `data_dir/edge`, one shard
  per physical collection, records in SQLite; hosted by its own process when `embedfleet serve` runs
  (`host.py`: Edge holds the GIL), in-process for tools and tests.
- **Qdrant server** (`ServerBackend`, `EMBEDFLEET_QDRANT_URL`): several gateway replicas and Celery
  workers sharing one store, sharding and replication.

Congruence tests (tests/congruence) run the same operations on both and compare the results.

Hybrid search: a collection created with `Layout(..., sparse="bm25")` stores a BM25 sparse vector beside
each dense one (`PointIn(..., sparse=bm25_document(text))`); `VectorStore.search(mode="sparse" |
"hybrid", sparse_query=bm25_query(text), fusion=..., weights=..., diversity=..., candidates=...)`
searches it. The encoder is one for both engines (`bm25.py`).
"""

from __future__ import annotations

from typing import cast

from services.config import Settings
from services.store.backend import (
    FUSIONS,
    INDEX_SCHEMAS,
    MODES,
    QUANTIZATIONS,
    Backend,
    Fusion,
    Mode,
    Quantization,
)
from services.store.bm25 import bm25_document, bm25_query
from services.store.edge import EdgeBackend, EdgeTuning, StoreLocked
from services.store.filters import parse_filter
from services.store.names import (
    DOC_ID_KEY,
    MAX_TOP_K,
    SOURCE_KEY,
    TENANT_KEY,
    alias_name,
    physical_name,
    point_id,
    validate_name,
)
from services.store.records import (
    SPARSE_KINDS,
    CollectionInfo,
    Layout,
    PhysicalInfo,
    PointIn,
    Sparse,
    StoredPoint,
)
from services.store.server import ServerBackend
from services.store.vector_store import VectorStore

__all__ = [
    "DOC_ID_KEY",
    "FUSIONS",
    "INDEX_SCHEMAS",
    "MAX_TOP_K",
    "MODES",
    "QUANTIZATIONS",
    "SOURCE_KEY",
    "SPARSE_KINDS",
    "TENANT_KEY",
    "Backend",
    "CollectionInfo",
    "EdgeBackend",
    "Fusion",
    "Layout",
    "Mode",
    "PhysicalInfo",
    "PointIn",
    "Quantization",
    "ServerBackend",
    "Sparse",
    "StoreLocked",
    "StoredPoint",
    "VectorStore",
    "alias_name",
    "bm25_document",
    "bm25_query",
    "edge_tuning",
    "open_store",
    "parse_filter",
    "physical_name",
    "point_id",
    "validate_name",
]


def edge_tuning(settings: Settings) -> EdgeTuning:
    return EdgeTuning(
        flush_ms=settings.store_flush_ms,
        index_threshold=settings.store_index_threshold,
        hnsw_ef=settings.store_hnsw_ef,
        hnsw_ef_construct=settings.store_hnsw_ef_construct,
        build_threads=settings.store_build_threads,
    )


def open_store(settings: Settings) -> VectorStore:
    """The store these settings name: a Qdrant server, the store host `embedfleet serve` started, or the
    embedded engine opened in this process (which then owns the data directory)."""
    if settings.qdrant_url:
        return VectorStore(
            ServerBackend.connect(
                settings.qdrant_url,
                settings.qdrant_api_key,
                hnsw_ef=settings.store_hnsw_ef,
                hnsw_ef_construct=settings.store_hnsw_ef_construct,
            )
        )
    if settings.store_socket is not None and settings.store_key:
        from services.store.host import RemoteBackend

        remote = RemoteBackend(settings.store_socket, bytes.fromhex(settings.store_key))
        return VectorStore(cast(Backend, remote))
    return VectorStore(EdgeBackend(settings.data_dir / "edge", edge_tuning(settings)))
