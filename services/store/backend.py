"""The engine interface under `VectorStore`: physical collections, points, metadata documents, query log.

Two implementations, proven equal by the congruence tests (tests/congruence): `EdgeBackend` (Qdrant
Edge in-process, the embedded default) and `ServerBackend` (qdrant-client against a Qdrant server; its
local mode stands in for the server in tests). Everything tenant-aware (validation, the `_tenant`
condition, collection records, migrations) lives above, in `VectorStore`, once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
from qdrant_client import models as qm

from services.store.records import Layout, Sparse

Quantization = Literal["none", "scalar", "binary"]
QUANTIZATIONS: tuple[str, ...] = ("none", "scalar", "binary")
DISTANCES: tuple[str, ...] = ("cosine", "dot", "euclid", "manhattan")
INDEX_SCHEMAS: tuple[str, ...] = ("keyword", "integer", "float", "geo", "text", "datetime", "uuid")
Mode = Literal["dense", "sparse", "hybrid"]
MODES: tuple[str, ...] = ("dense", "sparse", "hybrid")
Fusion = Literal["rrf", "dbsf"]
FUSIONS: tuple[str, ...] = ("rrf", "dbsf")
SPARSE_VECTOR = "bm25"  # the name of the sparse vector on both engines
RRF_K = 2  # the server's default RRF constant; Qdrant Edge has no default, so both are given it explicitly
Row = tuple[str, np.ndarray, dict[str, Any]] | tuple[str, np.ndarray, dict[str, Any], Sparse | None]
"""A point to write: (point id, dense vector, payload[, sparse vector])."""


@dataclass(frozen=True)
class Record:
    """A point as an engine returns it: the point id as a string, its whole payload."""

    id: str
    payload: dict[str, Any]
    vector: list[float] | None = None
    score: float | None = None
    sparse: Sparse | None = None


@dataclass(frozen=True)
class Search:
    """One search on one physical collection (the filter already holds the tenant). Validated above.

    - `mode="dense"`: nearest to `vector`; with `diversity`, MMR over the `candidates` nearest (scores
      are the plain similarities, the order is MMR's).
    - `mode="sparse"`: BM25 over the `bm25` sparse vector with `sparse` (a `bm25_query`); points sharing
      no token with it are not returned.
    - `mode="hybrid"`: a dense and a sparse stage of `candidates` points each, both under `filter`,
      fused by RRF (k = `RRF_K`, optional `weights` = (dense, sparse): a point at 0-based rank r of a
      stage of weight w scores 1 / ((r + 1) / w + k - 1), summed over the stages) or DBSF; with
      `diversity`, MMR on the dense vector over the `candidates` best fused points (scores are then the
      dense similarities).

    IDF statistics are taken over the points matching `idf_corpus` (the tenant's points): live
    statistics on both engines, where collection-wide ones would still count replaced and deleted
    points on Qdrant Edge until it optimizes.

    The dense stage searches exactly with `exact` (a filter naming a key with no payload index: the
    planner cannot estimate it and HNSW would return a few of the matches) and with ACORN on `acorn`
    (a filter on indexed keys other than the tenant: HNSW links may predate the key's index; Edge
    leaves it off where every graph of the shard was built with the key indexed, as it costs 3-4x).
    """

    vector: np.ndarray | None
    filter: qm.Filter
    limit: int
    score_threshold: float | None = None
    with_payload: bool | list[str] = True
    hnsw_ef: int | None = None
    mode: Mode = "dense"
    sparse: Sparse | None = None
    fusion: Fusion = "rrf"
    weights: tuple[float, float] | None = None
    diversity: float | None = None
    candidates: int | None = None
    idf_corpus: qm.Filter | None = None
    exact: bool = False
    acorn: bool = False


@dataclass(frozen=True)
class Page:
    """One scroll request: points in id order from `offset` (None: the first)."""

    filter: qm.Filter
    limit: int
    offset: str | None = None
    with_payload: bool | list[str] = True
    with_vectors: bool = False


class Backend(Protocol):
    kind: str  # "edge" | "server"

    # --- physical collections ---------------------------------------------------------------------
    def create(self, physical: str, layout: Layout, indexes: Mapping[str, str]) -> None:
        """A new physical collection: the layout's dimension, distance, storage, quantization and (with
        `layout.sparse == "bm25"`) a sparse vector named `SPARSE_VECTOR` with the IDF modifier."""

    def drop(self, physical: str) -> None: ...

    def create_index(self, physical: str, field: str, schema: str) -> None: ...

    def set_alias(self, alias: str, physical: str | None) -> None:
        """Point an operator-facing alias at `physical` (None: remove it). No read path uses aliases."""

    # --- points -----------------------------------------------------------------------------------
    def upsert(self, physical: str, points: Sequence[Row]) -> None:
        """Insert or replace whole points; a row's sparse vector (4th item) is optional."""

    def delete(self, physical: str, flt: qm.Filter) -> None: ...

    def retrieve(self, physical: str, ids: Sequence[str], with_vectors: bool) -> list[Record]:
        """With `with_vectors`, records carry the dense vector and, where the point has one, the sparse."""

    def query(self, physical: str, search: Search) -> list[Record]: ...

    def scroll(self, physical: str, page: Page) -> tuple[list[Record], str | None]:
        """A page of points and the offset of the next one (None at the end)."""

    def count(self, physical: str, flt: qm.Filter) -> int: ...

    # --- collection records: small JSON documents, one per (tenant, name) ---------------------------
    def meta_get(self, key: str) -> dict[str, Any] | None: ...

    def meta_put(self, key: str, tenant: str, doc: Mapping[str, Any]) -> None: ...

    def meta_delete(self, key: str) -> None: ...

    def meta_list(self, tenant: str | None) -> list[dict[str, Any]]:
        """Every record of `tenant` (None: of every tenant, for start-up recovery)."""

    # --- query log (services.querylog) --------------------------------------------------------------
    def log_put(self, key: str, slot_id: str, text: str, at: float) -> None: ...

    def log_recall(self, key: str, since: float, limit: int) -> list[str]:
        """Up to `limit` texts of `key` logged after `since`; older ones are deleted on the way."""

    def log_forget(self, key: str) -> None: ...

    def log_entries(self) -> list[tuple[str, str, str, float]]:
        """Every logged (key, slot id, text, at): what a store migration copies."""

    def flush(self) -> None: ...

    def close(self) -> None: ...
