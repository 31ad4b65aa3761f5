"""Tenant-scoped vector collections over one engine (`Backend`): Qdrant Edge in-process or a Qdrant server.

A collection is (tenant, name), served by one **physical** collection per model version; its record
(model, dimension, physicals, migration state) is one metadata document, written whole, so a reader
holding it sees a consistent collection. Every read addresses the physical named in that record, never an
alias. Tenancy is enforced twice: a tenant can only name its own collections (records are keyed by a
hash of tenant and name; another tenant's collection reads as missing: 404), and every point carries a
reserved `_tenant` payload key that every read, delete and scroll ANDs into the caller's filter. Payload
keys starting with `_` are reserved: callers can neither write nor filter on them (400).

Sync on purpose: the gateway calls it in a thread, Celery tasks call it directly. Record changes
(create, delete, switch, migrations) are serialised per process; replicas racing on the same collection's
record through a Qdrant server are last-writer-wins.

One module over the 450-line guide on purpose: it is the store's whole public surface (records, tenancy,
validation of every argument with its field name), one class callers read top-down.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import numpy as np
from qdrant_client import models as qm

from services.errors import Conflict, Inconsistent, InvalidInput, NotFound, StaleTarget
from services.store.backend import (
    DISTANCES,
    FUSIONS,
    INDEX_SCHEMAS,
    MODES,
    QUANTIZATIONS,
    Backend,
    Fusion,
    Mode,
    Page,
    Record,
    Search,
)
from services.store.filters import parse_filter, payload_keys, tenant_filter
from services.store.names import (
    DOC_ID_KEY,
    MAX_DIMENSION,
    MAX_TOP_K,
    SOURCE_KEY,
    TENANT_KEY,
    alias_name,
    is_reserved,
    meta_id,
    now,
    physical_name,
    point_id,
    query_slot_id,
    tenant_hash,
    validate_doc_id,
    validate_name,
    validate_payload,
    validate_source,
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

T = TypeVar("T")
REPLANS = 4  # metadata re-reads a delete makes while physicals appear under it
MAX_CANDIDATES = 2000  # points one stage of a hybrid or diversity search may consider
DEFAULT_CANDIDATES = 50  # ... by default at least this many, and 4 x top_k
TIE_MARGIN = 16  # extra points a sparse or fused search fetches so ties at the cut break by id, not by engine
MAX_SPARSE_INDEX = 2**32  # sparse indices are u32 on both engines (BM25's are token hashes)


def _vectors(vectors: Sequence[Any] | np.ndarray, dimension: int, physical: str) -> np.ndarray:
    """Every vector the store sees was made by the server for a collection the server chose, so a
    mismatch is the server's inconsistency (500), never a caller's 400."""
    try:
        arr = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError):
        raise Inconsistent(f"ragged or non-numeric vectors for {physical}") from None
    if arr.ndim != 2 or arr.shape[1] != dimension:
        raise Inconsistent(f"vectors of shape {arr.shape} for {physical} of dimension {dimension}")
    if not np.isfinite(arr).all():
        raise Inconsistent(f"non-finite vectors for {physical}")
    return arr


def _sparse(value: Any, what: str) -> Sparse:
    """A sparse vector as (indices, values): unique indices in [0, 2^32), one finite value each. 400
    (field `sparse`) otherwise."""
    try:
        raw_indices, raw_values = value
        indices, values = list(raw_indices), [float(v) for v in raw_values]
    except (TypeError, ValueError):
        raise InvalidInput(f"{what} must be (indices, values)", field="sparse") from None
    if not all(isinstance(i, int | np.integer) and not isinstance(i, bool) for i in indices):
        raise InvalidInput(f"{what} indices must be integers", field="sparse")
    indices = [int(i) for i in indices]
    if len(indices) != len(values):
        raise InvalidInput(f"{what} needs one value per index", field="sparse")
    if len(set(indices)) != len(indices) or not all(0 <= i < MAX_SPARSE_INDEX for i in indices):
        raise InvalidInput(f"{what} indices must be unique and within [0, 2^32)", field="sparse")
    if not all(math.isfinite(v) for v in values):
        raise InvalidInput(f"{what} has non-finite values", field="sparse")
    return indices, values


def _tie_key(record: Record) -> tuple[float, str]:
    """Best first; equal scores (to 6 significant digits, as both engines compute them) by point id."""
    return -float(f"{record.score or 0.0:.6g}"), record.id


def _to_point(record: Record) -> StoredPoint:
    payload = record.payload
    return StoredPoint(
        id=payload.get(DOC_ID_KEY, record.id),
        payload={k: v for k, v in payload.items() if not is_reserved(k)},
        source=payload.get(SOURCE_KEY),
        score=record.score,
        vector=record.vector,
        sparse=record.sparse,
    )


class VectorStore:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._admin = threading.RLock()

    @property
    def kind(self) -> str:
        return self.backend.kind

    def close(self) -> None:
        self.backend.close()

    # --- collection records ---------------------------------------------------------------------
    def load_collection(self, tenant: str, name: str) -> CollectionInfo:
        """The collection's record, one read (no point count): the snapshot plans are made from."""
        return self._load(tenant, name)

    def _find(self, tenant: str, name: str) -> CollectionInfo | None:
        validate_name(name)
        doc = self.backend.meta_get(meta_id(tenant, name))
        if doc is None:
            return None
        info = CollectionInfo.from_payload(doc)
        if info.tenant != tenant or info.name != name:  # cannot happen with uuid5 keys; never trust it
            return None
        return info

    def _load(self, tenant: str, name: str) -> CollectionInfo:
        info = self._find(tenant, name)
        if info is None:
            raise NotFound(f"collection {name!r} not found", field="name")
        return info

    def _save(self, info: CollectionInfo) -> None:
        self.backend.meta_put(meta_id(info.tenant, info.name), info.tenant, info.to_payload())

    def all_collections(self) -> list[CollectionInfo]:
        """Every tenant's collections: what start-up recovery resumes (in-process migrations)."""
        return [CollectionInfo.from_payload(d) for d in self.backend.meta_list(None)]

    # --- collections ---------------------------------------------------------------------------
    def create_collection(
        self, tenant: str, name: str, layout: Layout, *, query_log: bool = False
    ) -> CollectionInfo:
        """A new collection with one physical collection; 409 if the name is taken."""
        alias = alias_name(tenant, name)
        with self._admin:
            if self._find(tenant, name) is not None:
                raise Conflict(f"collection {name!r} already exists", field="name")
            phys = self._create_physical(tenant, name, layout, {})
            try:
                self.backend.set_alias(alias, phys.name)
                info = CollectionInfo(
                    tenant=tenant,
                    name=name,
                    alias=alias,
                    physical=phys.name,
                    physicals=(phys,),
                    created_at=phys.created_at,
                    query_log=query_log,
                )
                self._save(info)  # last: the collection exists for readers only once it is complete
            except BaseException:
                self.backend.drop(phys.name)
                raise
        return info

    def list_collections(self, tenant: str) -> list[CollectionInfo]:
        tenant_hash(tenant)  # validates the tenant
        infos = [CollectionInfo.from_payload(d) for d in self.backend.meta_list(tenant)]
        return sorted((i for i in infos if i.tenant == tenant), key=lambda i: i.name)

    def get_collection(self, tenant: str, name: str) -> CollectionInfo:
        """The collection's record with its live point count (tenant-scoped, exact)."""
        info = self._load(tenant, name)
        count = self._on_physical(tenant, name, info.physical, self.backend.count, tenant_filter(tenant))
        return replace(info, points_count=count)

    def delete_collection(self, tenant: str, name: str) -> None:
        """Forget the collection first (so it is gone for readers at once), then drop its vectors."""
        with self._admin:
            info = self._load(tenant, name)
            self.backend.meta_delete(meta_id(tenant, name))
            self.backend.set_alias(info.alias, None)
            for phys in info.physicals:
                self.backend.drop(phys.name)
            self.forget_queries(tenant, name)

    def set_migration(
        self,
        tenant: str,
        name: str,
        migration: Mapping[str, Any] | None,
        status: str | None = None,
        unless: Callable[[Mapping[str, Any] | None], str | None] | None = None,
    ) -> CollectionInfo:
        """Persist the migration lifecycle's slot (opaque here) and optionally the collection status.
        `unless(current_slot)` may veto the write with a reason (409): a step that read the record before a
        cancel or rollback must not write its stale view over it."""
        with self._admin:
            info = self._load(tenant, name)
            veto = unless(info.migration) if unless is not None else None
            if veto is not None:
                raise Conflict(veto, field="name")
            info = replace(
                info,
                migration=None if migration is None else json.loads(json.dumps(migration)),
                status=info.status if status is None else status,
            )
            self._save(info)
        return info

    # --- query log (texts kept for fitting migrations; no API reads them) -------------------------
    def set_query_log(self, tenant: str, name: str, enabled: bool) -> CollectionInfo:
        """Opt a collection in or out; opting out forgets what was kept."""
        with self._admin:
            info = replace(self._load(tenant, name), query_log=enabled)
            self._save(info)
        if not enabled:
            self.forget_queries(tenant, name)
        return info

    def log_query(self, tenant: str, name: str, slot: int, text: str, at: float) -> None:
        """Write `text` into one of the collection's slots: a fixed slot space bounds the log by
        construction (a random slot per query keeps a recency-weighted sample), across replicas."""
        self.backend.log_put(meta_id(tenant, name), query_slot_id(tenant, name, slot), text, at)

    def logged_queries(self, tenant: str, name: str, since: float, limit: int) -> list[str]:
        """Up to `limit` logged texts of this (tenant, collection) written after `since`; older ones are
        deleted on the way (the retention limit)."""
        return self.backend.log_recall(meta_id(tenant, name), since, limit)

    def forget_queries(self, tenant: str, name: str) -> None:
        self.backend.log_forget(meta_id(tenant, name))

    def ensure_payload_index(self, tenant: str, name: str, field: str, schema: str) -> None:
        """Index a payload field on every physical collection, and on those built later by migrations."""
        if not isinstance(field, str) or not field or is_reserved(field):
            raise InvalidInput("index field must be a non-reserved payload key", field="field")
        if schema not in INDEX_SCHEMAS:
            raise InvalidInput(f"index schema must be one of {', '.join(INDEX_SCHEMAS)}", field="schema")
        with self._admin:
            info = self._load(tenant, name)
            for phys in info.physicals:
                self.backend.create_index(phys.name, field, schema)
            if info.indexes.get(field) != schema:
                self._save(replace(info, indexes={**info.indexes, field: schema}))

    # --- physical collections (migrations) -----------------------------------------------------
    def _create_physical(
        self, tenant: str, name: str, layout: Layout, indexes: Mapping[str, str]
    ) -> PhysicalInfo:
        model, version, dimension = layout.model, layout.version, layout.dimension
        if not isinstance(model, str) or not model:
            raise InvalidInput("model must be a non-empty string", field="model")
        if not isinstance(version, str) or not version:
            raise InvalidInput("version must be a non-empty string", field="version")
        if (
            not isinstance(dimension, int)
            or isinstance(dimension, bool)
            or not 0 < dimension <= MAX_DIMENSION
        ):
            raise InvalidInput(f"dimension must be an integer in 1..{MAX_DIMENSION}", field="dimensions")
        if layout.distance not in DISTANCES:
            raise InvalidInput(f"distance must be one of {', '.join(DISTANCES)}", field="distance")
        if layout.quantization not in QUANTIZATIONS:
            raise InvalidInput(
                f"quantization must be one of {', '.join(QUANTIZATIONS)}", field="quantization"
            )
        if layout.sparse not in SPARSE_KINDS:
            raise InvalidInput(f"sparse must be one of {', '.join(SPARSE_KINDS)}", field="sparse")
        phys = PhysicalInfo(
            name=physical_name(tenant, name, model, version),
            model=model,
            version=version,
            dimension=dimension,
            distance=layout.distance,
            on_disk=bool(layout.on_disk),
            quantization=layout.quantization,
            created_at=now(),
            sparse=layout.sparse,
        )
        # the tenant condition rides on every request: it must be an index probe
        self.backend.create(phys.name, phys.layout, {TENANT_KEY: "keyword", **indexes})
        return phys

    def create_physical(self, tenant: str, name: str, layout: Layout) -> PhysicalInfo:
        """A new, empty physical collection for a migration target."""
        with self._admin:
            info = self._load(tenant, name)
            phys = self._create_physical(tenant, name, layout, info.indexes)
            try:
                self._save(replace(info, physicals=(*info.physicals, phys)))
            except BaseException:
                self.backend.drop(phys.name)
                raise
        return phys

    def switch_alias(
        self,
        tenant: str,
        name: str,
        physical: str,
        migration: Mapping[str, Any] | None = None,
        status: str | None = None,
    ) -> CollectionInfo:
        """Cutover (or rollback): reads move to `physical`; the other physicals are kept.

        The live physical, the migration slot and the status change in ONE record write: readers plan
        from that record (services.migration.state), so none can see the new physical with the old
        migration state. A server-side alias follows for operators' tools; no read path uses it.
        """
        with self._admin:
            info = self._load(tenant, name)
            info.physical_info(physical)  # 404 unless it belongs to this collection
            info = replace(info, physical=physical)
            if migration is not None:
                info = replace(info, migration=json.loads(json.dumps(migration)))
            if status is not None:
                info = replace(info, status=status)
            self._save(info)
            self.backend.set_alias(info.alias, physical)
        return info

    def drop_physical(self, tenant: str, name: str, physical: str) -> CollectionInfo:
        """Delete a physical collection no longer needed for rollback; 409 for the live one."""
        with self._admin:
            info = self._load(tenant, name)
            info.physical_info(physical)
            if physical == info.physical:
                raise Conflict("cannot drop the physical collection that serves reads", field="physical")
            info = replace(info, physicals=tuple(p for p in info.physicals if p.name != physical))
            self._save(info)
            self.backend.drop(physical)
        return info

    # --- points --------------------------------------------------------------------------------
    def _target(self, tenant: str, name: str, physical: str | None) -> tuple[CollectionInfo, PhysicalInfo]:
        """(record, physical to address): the live one by default, or a named one. Addressed by name,
        so the record read here is the only source."""
        info = self._load(tenant, name)
        return info, info.current if physical is None else info.physical_info(physical)

    def _on_physical(self, tenant: str, name: str, physical: str, call: Callable[..., T], *args: Any) -> T:
        """Run an engine call on a physical collection read from the record a moment ago; if it was
        dropped in between, say so as `StaleTarget` (the caller re-plans) instead of an engine error."""
        try:
            return call(physical, *args)
        except Exception as exc:
            if isinstance(exc, InvalidInput | Inconsistent):
                raise
            info = self._find(tenant, name)
            if info is None or all(p.name != physical for p in info.physicals):
                raise StaleTarget(
                    f"collection {name!r} no longer has {physical!r}", field="physical"
                ) from exc
            raise

    def upsert(
        self,
        tenant: str,
        name: str,
        points: Sequence[PointIn | tuple[Any, ...]],
        physical: str | None = None,
    ) -> int:
        """Write documents (idempotent: deterministic ids); returns how many were written. A point's
        `sparse` (its `bm25_document(text)`) needs a collection with `sparse="bm25"` (else 400)."""
        _, phys = self._target(tenant, name, physical)
        try:
            items = [PointIn(*p) for p in points]
        except TypeError:
            raise InvalidInput(
                "points are (id, vector, payload?, source?, sparse?)", field="points"
            ) from None
        if not items:
            return 0
        doc_ids = [validate_doc_id(p.doc_id) for p in items]
        if len(set(doc_ids)) != len(doc_ids):
            raise InvalidInput("document ids must be unique within one write", field="id")
        vectors = _vectors([p.vector for p in items], phys.dimension, phys.name)
        sparses: list[Sparse | None] = [
            None if p.sparse is None else _sparse(p.sparse, "sparse vector") for p in items
        ]
        if phys.sparse != "bm25" and any(sv is not None for sv in sparses):
            raise InvalidInput(f"collection {name!r} has no sparse vectors", field="sparse")
        rows = []
        for p, vec, sv in zip(items, vectors, sparses, strict=True):
            payload = validate_payload(p.payload)
            payload[TENANT_KEY] = tenant
            payload[DOC_ID_KEY] = p.doc_id
            source = validate_source(p.source)
            if source is not None:
                payload[SOURCE_KEY] = source
            rows.append((point_id(tenant, name, p.doc_id), vec, payload, sv))
        self._on_physical(tenant, name, phys.name, self.backend.upsert, rows)
        return len(rows)

    def delete_points(
        self,
        tenant: str,
        name: str,
        ids: Sequence[str] | None = None,
        filter: qm.Filter | Mapping[str, Any] | None = None,
        physical: str | None = None,
    ) -> None:
        """Delete by doc ids and/or filter (both: their intersection). By default from every physical
        collection, so a document deleted during a migration is gone from both sides; the record is read
        again afterwards, and a physical created meanwhile (a migration that started) is cleaned too, so
        a backfill that read the document before the delete cannot bring it back."""
        if ids is None and filter is None:
            raise InvalidInput("delete needs ids or a filter", field="ids")
        flt = parse_filter(filter)
        pids = None if ids is None else [point_id(tenant, name, validate_doc_id(i)) for i in ids]
        if pids == []:
            return
        selector = tenant_filter(tenant, flt, pids)
        done: set[str] = set()
        for _ in range(REPLANS):
            info = self._load(tenant, name)
            if physical is not None:
                targets = [info.physical_info(physical).name]
            else:
                targets = [p.name for p in info.physicals if p.name not in done]
            if not targets:
                return
            for target in targets:
                done.add(target)
                try:
                    self._on_physical(tenant, name, target, self.backend.delete, selector)
                except StaleTarget:
                    if physical is not None:
                        raise  # dropped meanwhile: nothing left to delete there unless it was asked for
            if physical is not None:
                return

    def get_points(
        self,
        tenant: str,
        name: str,
        ids: Sequence[str],
        with_vectors: bool = False,
        physical: str | None = None,
    ) -> list[StoredPoint]:
        """Documents by doc id, in request order; missing ones are simply absent."""
        _, phys = self._target(tenant, name, physical)
        pids = [point_id(tenant, name, validate_doc_id(i)) for i in ids]
        if not pids:
            return []
        records = self._on_physical(tenant, name, phys.name, self.backend.retrieve, pids, with_vectors)
        by_id = {r.id: r for r in records if r.payload.get(TENANT_KEY) == tenant}
        return [_to_point(by_id[p]) for p in pids if p in by_id]

    def search(
        self,
        tenant: str,
        name: str,
        vector: Sequence[float] | np.ndarray | None,
        top_k: int = 10,
        filter: qm.Filter | Mapping[str, Any] | None = None,
        with_payload: bool = True,
        score_threshold: float | None = None,
        physical: str | None = None,
        *,
        mode: Mode = "dense",
        sparse_query: tuple[Sequence[int], Sequence[float]] | None = None,
        fusion: Fusion | None = None,
        weights: tuple[float, float] | None = None,
        diversity: float | None = None,
        candidates: int | None = None,
    ) -> list[StoredPoint]:
        """The tenant's documents matching `filter` that best answer the query, best first.

        - `mode="dense"` (default): nearest to `vector` (the query embedding); scores are similarities.
        - `mode="sparse"`: BM25 with `sparse_query` (`bm25_query(text)`); `vector` is not used (may be
          None); documents sharing no token with the query are not returned; scores are BM25 scores.
        - `mode="hybrid"`: a dense and a BM25 stage of `candidates` documents each, both under `filter`,
          fused by `fusion`: "rrf" (default; k=2, optional `weights` = (dense, sparse) > 0: a document at
          0-based rank r of a stage of weight w scores 1 / ((r + 1) / w + 1), summed) or "dbsf" (each
          stage's scores normalised by mean +- 3 sigma, summed).
        - `diversity` (dense and hybrid): maximal marginal relevance in [0, 1], the server's meaning (0 =
          pure relevance, plain nearest order), picking `top_k` out of the `candidates` best; scores
          stay the dense similarities, the order is MMR's.

        Sparse and hybrid modes need a collection with `sparse="bm25"` (else 400, field `mode`). IDF is
        computed over the collection's live points. Sparse and fused results with equal scores are
        ordered by point id, so both engines (and repeated calls) agree. `candidates` defaults to
        max(4 x top_k, 50), at most 2000. Invalid combinations are 400 naming `mode`, `sparse`,
        `fusion`, `weights`, `diversity` or `candidates`.
        """
        if not isinstance(top_k, int) or isinstance(top_k, bool) or not 0 < top_k <= MAX_TOP_K:
            raise InvalidInput(f"top_k must be in 1..{MAX_TOP_K}", field="top_k")
        if mode not in MODES:
            raise InvalidInput(f"mode must be one of {', '.join(MODES)}", field="mode")
        flt = parse_filter(filter)
        info, phys = self._target(tenant, name, physical)
        keys = payload_keys(flt)
        exact = not keys <= info.indexes.keys()
        options = _search_options(
            phys, name, mode, sparse_query, fusion, weights, diversity, candidates, top_k
        )
        query = None if mode == "sparse" else _vectors([_required(vector)], phys.dimension, phys.name)[0]
        ranked = mode != "dense" and diversity is None  # sparse or fused: ties broken by point id
        search = Search(
            vector=query,
            filter=tenant_filter(tenant, flt),
            limit=top_k + TIE_MARGIN if ranked else top_k,
            score_threshold=score_threshold,
            with_payload=True if with_payload else [DOC_ID_KEY],
            mode=mode,
            idf_corpus=tenant_filter(tenant) if mode != "dense" else None,
            exact=exact,
            acorn=bool(keys) and not exact,
            **options,
        )
        hits = self._on_physical(tenant, name, phys.name, self.backend.query, search)
        if ranked:
            hits = sorted(hits, key=_tie_key)[:top_k]
        return [_to_point(h) for h in hits]

    def scroll(
        self,
        tenant: str,
        name: str,
        offset: str | None = None,
        limit: int = 256,
        filter: qm.Filter | Mapping[str, Any] | None = None,
        with_payload: bool = True,
        with_vectors: bool = False,
        physical: str | None = None,
    ) -> tuple[list[StoredPoint], str | None]:
        """One page of the tenant's points in id order and the offset of the next (None at the end).
        The offset is stable across restarts, so a backfill can persist it as its cursor."""
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise InvalidInput("limit must be a positive integer", field="limit")
        flt = parse_filter(filter)
        _, phys = self._target(tenant, name, physical)
        selector: bool | list[str] = True if with_payload else [DOC_ID_KEY]
        page = Page(tenant_filter(tenant, flt), limit, offset, selector, with_vectors)
        records, nxt = self._on_physical(tenant, name, phys.name, self.backend.scroll, page)
        return [_to_point(r) for r in records], nxt

    def scroll_ids(
        self, tenant: str, name: str, physical: str | None = None, batch: int = 1024
    ) -> Iterator[list[str]]:
        """Every doc id of the collection (or one physical), in pages: what a backfill or a
        reconciliation compares between the two sides of a migration."""
        offset: str | None = None
        while True:
            page, offset = self.scroll(tenant, name, offset, batch, with_payload=False, physical=physical)
            if page:
                yield [p.id for p in page]
            if offset is None:
                return


def _required(vector: Sequence[float] | np.ndarray | None) -> Sequence[float] | np.ndarray:
    if vector is None:  # the server embeds the query: a missing vector is its own mistake
        raise Inconsistent("dense and hybrid search need the query vector")
    return vector


def _search_options(
    phys: PhysicalInfo,
    name: str,
    mode: str,
    sparse_query: Any,
    fusion: Any,
    weights: Any,
    diversity: Any,
    candidates: Any,
    top_k: int,
) -> dict[str, Any]:
    """The validated hybrid, sparse and diversity options of a search, as `Search` fields."""
    out: dict[str, Any] = {}
    if mode != "dense" and phys.sparse != "bm25":
        raise InvalidInput(
            f"mode {mode!r} needs a collection created with sparse vectors (sparse='bm25'); "
            f"{name!r} has none",
            field="mode",
        )
    if mode == "dense":
        if sparse_query is not None:
            raise InvalidInput("sparse_query is used by mode 'sparse' or 'hybrid' only", field="sparse")
    elif sparse_query is None:
        raise InvalidInput(f"mode {mode!r} needs a sparse query vector (bm25_query)", field="sparse")
    else:
        out["sparse"] = _sparse(sparse_query, "sparse query")
    if mode != "hybrid" and (fusion is not None or weights is not None):
        raise InvalidInput(
            "fusion and weights apply to mode 'hybrid' only",
            field="fusion" if fusion is not None else "weights",
        )
    if fusion is not None and fusion not in FUSIONS:
        raise InvalidInput(f"fusion must be one of {', '.join(FUSIONS)}", field="fusion")
    out["fusion"] = fusion or "rrf"
    if weights is not None:
        if out["fusion"] != "rrf":
            raise InvalidInput("weights apply to fusion 'rrf' only", field="weights")
        try:
            pair = tuple(float(w) for w in weights)
        except (TypeError, ValueError):
            pair = ()
        if (
            len(pair) != 2
            or any(isinstance(w, bool) for w in weights)
            or not all(math.isfinite(w) and w > 0 for w in pair)
        ):
            raise InvalidInput("weights must be two positive numbers: (dense, sparse)", field="weights")
        out["weights"] = pair
    if diversity is not None:
        if mode == "sparse":
            raise InvalidInput(
                "diversity (MMR) works on the dense vector: use mode 'dense' or 'hybrid'", field="diversity"
            )
        if (
            not isinstance(diversity, int | float)
            or isinstance(diversity, bool)
            or not 0.0 <= diversity <= 1.0
        ):
            raise InvalidInput("diversity must be a number in [0, 1]", field="diversity")
        out["diversity"] = float(diversity)
    if candidates is not None:
        if mode != "hybrid" and diversity is None:
            raise InvalidInput("candidates apply to hybrid and diversity searches only", field="candidates")
        if (
            not isinstance(candidates, int)
            or isinstance(candidates, bool)
            or not top_k <= candidates <= MAX_CANDIDATES
        ):
            raise InvalidInput(
                f"candidates must be an integer in top_k..{MAX_CANDIDATES}", field="candidates"
            )
    if mode == "hybrid" or diversity is not None:
        out["candidates"] = candidates or min(max(4 * top_k, DEFAULT_CANDIDATES), MAX_CANDIDATES)
    return out
