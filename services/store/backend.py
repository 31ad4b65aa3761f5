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

from services.store.records import Layout

Quantization = Literal["none", "scalar", "binary"]
QUANTIZATIONS: tuple[str, ...] = ("none", "scalar", "binary")
DISTANCES: tuple[str, ...] = ("cosine", "dot", "euclid", "manhattan")
INDEX_SCHEMAS: tuple[str, ...] = ("keyword", "integer", "float", "geo", "text", "datetime", "uuid")


@dataclass(frozen=True)
class Record:
    """A point as an engine returns it: the point id as a string, its whole payload."""

    id: str
    payload: dict[str, Any]
    vector: list[float] | None = None
    score: float | None = None


@dataclass(frozen=True)
class Search:
    """One nearest-neighbour request on one physical collection (the filter already holds the tenant)."""

    vector: np.ndarray
    filter: qm.Filter
    limit: int
    score_threshold: float | None = None
    with_payload: bool | list[str] = True
    hnsw_ef: int | None = None


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
        """A new physical collection: the layout's dimension, distance, storage and quantization."""

    def drop(self, physical: str) -> None: ...

    def create_index(self, physical: str, field: str, schema: str) -> None: ...

    def set_alias(self, alias: str, physical: str | None) -> None:
        """Point an operator-facing alias at `physical` (None: remove it). No read path uses aliases."""

    # --- points -----------------------------------------------------------------------------------
    def upsert(self, physical: str, points: Sequence[tuple[str, np.ndarray, dict[str, Any]]]) -> None: ...

    def delete(self, physical: str, flt: qm.Filter) -> None: ...

    def retrieve(self, physical: str, ids: Sequence[str], with_vectors: bool) -> list[Record]: ...

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
