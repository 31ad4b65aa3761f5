"""`ServerBackend`: a Qdrant server through qdrant-client (or its local mode, the server's stand-in in tests).

For deployments that outgrow one process: several gateway replicas and Celery workers sharing the
store, collections beyond one machine's memory, sharding and replication (docs/operations.md). Collection
records and the query log live in two small Qdrant collections of their own (`ef_meta`, `ef_querylog`),
so every replica and worker sees the same state with no local files.

Local mode (`QdrantClient(path=...)`) is a Python emulation: brute-force search, quantization and HNSW
settings accepted and ignored, one owning process, not safe for concurrent threads (a lock serialises
it). It exists here so the server API is exercised without a server binary. qdrant-client 1.20's local
mode implements everything `query` sends: the IDF modifier, sparse queries with a corpus-scoped IDF,
prefetch with the top-level filter propagated to every stage, `RrfQuery(Rrf(k, weights))`, DBSF and
`NearestQuery(mmr=Mmr(diversity, candidates_limit))` over plain or fused candidates, with the server's
formulas (tests/congruence compares them with Qdrant Edge).

A remote server must be new enough for what a search asks (`SERVER_FEATURES`): MMR needs Qdrant 1.15;
sparse and hybrid search need 1.19 (IDF statistics scoped to the tenant's points; `RrfQuery` with an
explicit k came in 1.16, its weights in 1.17). An older server gets a clear 400 naming the version
instead of an opaque engine error.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
from qdrant_client import QdrantClient
from qdrant_client import models as qm

from services.errors import InvalidInput
from services.store.backend import RRF_K, SPARSE_VECTOR, Page, Record, Row, Search
from services.store.records import Layout, Sparse

META_COLLECTION = "ef_meta"
QUERY_LOG_COLLECTION = "ef_querylog"
WRITE_BATCH = 256
DISTANCES: dict[str, qm.Distance] = {
    "cosine": qm.Distance.COSINE,
    "dot": qm.Distance.DOT,
    "euclid": qm.Distance.EUCLID,
    "manhattan": qm.Distance.MANHATTAN,
}


def _quantization(quantization: str) -> qm.QuantizationConfig | None:
    if quantization == "scalar":
        return qm.ScalarQuantization(
            scalar=qm.ScalarQuantizationConfig(type=qm.ScalarType.INT8, quantile=0.99, always_ram=True)
        )
    if quantization == "binary":
        return qm.BinaryQuantization(binary=qm.BinaryQuantizationConfig(always_ram=True))
    return None


# feature: (oldest Qdrant server version that has it, what it is for the error message)
ACORN_SINCE = (1, 16)  # older servers search without it (see EdgeShard._params for why it is asked)
SERVER_FEATURES: dict[str, tuple[tuple[int, int], str, str]] = {
    "mmr": ((1, 15), "diversity (MMR)", "diversity"),
    "sparse": ((1, 19), "sparse and hybrid search (tenant-scoped IDF)", "mode"),
}


def _record(r: qm.Record | qm.ScoredPoint, with_vectors: bool = False) -> Record:
    vector: list[float] | None = None
    sparse: Sparse | None = None
    raw: Any = r.vector if with_vectors else None
    if isinstance(raw, dict):  # named form: the collection has a sparse vector too
        sv = raw.get(SPARSE_VECTOR)
        if isinstance(sv, qm.SparseVector):
            sparse = ([int(i) for i in sv.indices], [float(v) for v in sv.values])
        raw = raw.get("")
    if isinstance(raw, list):  # the unnamed dense vector: a flat list of floats
        vector = [float(v) for v in raw if isinstance(v, int | float)]
    return Record(str(r.id), dict(r.payload or {}), vector, getattr(r, "score", None), sparse)


def _vector(vec: np.ndarray, sparse: Sparse | None) -> Any:
    if sparse is None:
        return vec.tolist()
    return {"": vec.tolist(), SPARSE_VECTOR: qm.SparseVector(indices=list(sparse[0]), values=list(sparse[1]))}


def _version(text: str) -> tuple[int, int] | None:
    parts = text.lstrip("v").split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


class ServerBackend:
    kind = "server"

    def __init__(
        self,
        client: QdrantClient,
        *,
        serialize: bool = False,
        local: bool = False,
        hnsw_ef: int | None = None,
        hnsw_ef_construct: int | None = None,
    ) -> None:
        """`serialize` holds one lock around every call: local mode is not safe for concurrent threads.
        `local`: the client is qdrant-client's local mode (it implements every search feature).
        `hnsw_ef`: the search breadth a search asks when it names none (None: the collection's);
        `hnsw_ef_construct`: the build breadth of collections created here (None: the server's)."""
        self.client = client
        self.hnsw_ef = hnsw_ef
        self.hnsw_ef_construct = hnsw_ef_construct
        self._local = local
        self._server_version: tuple[int, int] | None = None
        self._io: AbstractContextManager[Any] = threading.RLock() if serialize else nullcontext()
        self._tables: set[str] = set()  # key-value tables known to exist: checked once per process
        self._table(META_COLLECTION, "tenant")

    @classmethod
    def connect(
        cls,
        url: str,
        api_key: str | None = None,
        *,
        hnsw_ef: int | None = None,
        hnsw_ef_construct: int | None = None,
    ) -> ServerBackend:
        return cls(
            QdrantClient(url=url, api_key=api_key), hnsw_ef=hnsw_ef, hnsw_ef_construct=hnsw_ef_construct
        )

    @classmethod
    def local(cls, path: str) -> ServerBackend:
        # the gateway calls from a thread pool: local mode is plain dicts over sqlite, whose same-thread
        # check (on where sqlite is not built thread-safe) would refuse; the lock serialises instead
        return cls(QdrantClient(path=path, force_disable_check_same_thread=True), serialize=True, local=True)

    def _older_than(self, needed: tuple[int, int]) -> bool:
        """Whether the server is known to be older than `needed` (local mode and unknown versions are not)."""
        if self._local:
            return False
        if self._server_version is None:
            try:
                with self._io:
                    found = _version(self.client.info().version)
            except Exception:
                return False  # cannot tell: let the server answer for itself
            if found is None:
                return False
            self._server_version = found
        return self._server_version < needed

    def _require(self, feature: str) -> None:
        """400 naming the Qdrant version a feature needs when the server is older (asked once)."""
        needed, what, field = SERVER_FEATURES[feature]
        if self._older_than(needed):
            have = ".".join(map(str, self._server_version or ()))
            raise InvalidInput(
                f"{what} needs a Qdrant server {needed[0]}.{needed[1]} or newer; this one is {have}",
                field=field,
            )

    def _table(self, collection: str, key: str) -> None:
        """A key-value table with a keyword index on `key`; a constant 1-d vector because older servers
        reject vector-less points."""
        if collection in self._tables:
            return
        with self._io:
            if not self.client.collection_exists(collection):
                try:
                    self.client.create_collection(
                        collection, vectors_config=qm.VectorParams(size=1, distance=qm.Distance.DOT)
                    )
                except Exception:
                    if not self.client.collection_exists(collection):  # lost a start-up race: fine
                        raise
                else:
                    self.client.create_payload_index(collection, key, qm.PayloadSchemaType.KEYWORD, wait=True)
        self._tables.add(collection)

    # --- physical collections ---------------------------------------------------------------------
    def create(self, physical: str, spec: Layout, indexes: Mapping[str, str]) -> None:
        with self._io:
            self.client.create_collection(
                physical,
                vectors_config=qm.VectorParams(
                    size=spec.dimension, distance=DISTANCES[spec.distance], on_disk=spec.on_disk
                ),
                quantization_config=_quantization(spec.quantization),
                hnsw_config=qm.HnswConfigDiff(ef_construct=self.hnsw_ef_construct)
                if self.hnsw_ef_construct
                else None,
                sparse_vectors_config={SPARSE_VECTOR: qm.SparseVectorParams(modifier=qm.Modifier.IDF)}
                if spec.sparse == "bm25"
                else None,
            )
            for key, schema in indexes.items():
                self.client.create_payload_index(physical, key, qm.PayloadSchemaType(schema), wait=True)

    def drop(self, physical: str) -> None:
        with self._io:
            self.client.delete_collection(physical)

    def create_index(self, physical: str, field: str, schema: str) -> None:
        with self._io:
            self.client.create_payload_index(physical, field, qm.PayloadSchemaType(schema), wait=True)

    def set_alias(self, alias: str, physical: str | None) -> None:
        """One alias request, so no reader of the alias ever finds it missing."""
        with self._io:
            current = {a.alias_name: a.collection_name for a in self.client.get_aliases().aliases}
            ops: list[qm.CreateAliasOperation | qm.DeleteAliasOperation] = []
            if alias in current:
                ops.append(qm.DeleteAliasOperation(delete_alias=qm.DeleteAlias(alias_name=alias)))
            if physical is not None:
                ops.append(
                    qm.CreateAliasOperation(
                        create_alias=qm.CreateAlias(collection_name=physical, alias_name=alias)
                    )
                )
            if ops:
                self.client.update_collection_aliases(ops)

    # --- points -----------------------------------------------------------------------------------
    def upsert(self, physical: str, points: Sequence[Row]) -> None:
        structs = [
            qm.PointStruct(id=pid, vector=_vector(vec, rest[0] if rest else None), payload=payload)
            for pid, vec, payload, *rest in points
        ]
        with self._io:
            for start in range(0, len(structs), WRITE_BATCH):
                self.client.upsert(physical, points=structs[start : start + WRITE_BATCH], wait=True)

    def delete(self, physical: str, flt: qm.Filter) -> None:
        with self._io:
            self.client.delete(physical, points_selector=qm.FilterSelector(filter=flt), wait=True)

    def retrieve(self, physical: str, ids: Sequence[str], with_vectors: bool) -> list[Record]:
        with self._io:
            records = self.client.retrieve(physical, list(ids), with_payload=True, with_vectors=with_vectors)
        return [_record(r, with_vectors) for r in records]

    def query(self, physical: str, search: Search) -> list[Record]:
        s = search
        ef = s.hnsw_ef or self.hnsw_ef
        dense_params = (
            qm.SearchParams(
                hnsw_ef=ef,
                exact=s.exact,
                acorn=(
                    qm.AcornSearchParams(enable=True, max_selectivity=1.0)
                    if s.acorn and not self._older_than(ACORN_SINCE)
                    else None
                ),
            )
            if ef or s.exact or s.acorn
            else None
        )
        idf = qm.SearchParams(idf=qm.IdfCorpusParams(corpus=s.idf_corpus)) if s.idf_corpus else None
        dense = s.vector.tolist() if s.vector is not None else None
        sparse = qm.SparseVector(indices=list(s.sparse[0]), values=list(s.sparse[1])) if s.sparse else None
        if s.diversity is not None:
            self._require("mmr")
        query: Any
        prefetch: list[qm.Prefetch] | None = None
        using: str | None = None
        params = dense_params
        if s.mode == "sparse":
            self._require("sparse")
            query, using, params = sparse, SPARSE_VECTOR, idf
        elif s.mode == "hybrid":
            self._require("sparse")
            per_stage = s.candidates or 4 * s.limit
            prefetch = [
                qm.Prefetch(query=dense, limit=per_stage, params=dense_params),
                qm.Prefetch(query=sparse, using=SPARSE_VECTOR, limit=per_stage, params=idf),
            ]
            fusion: qm.Query = (
                qm.FusionQuery(fusion=qm.Fusion.DBSF)
                if s.fusion == "dbsf"
                else qm.RrfQuery(rrf=qm.Rrf(k=RRF_K, weights=list(s.weights) if s.weights else None))
            )
            query, params = fusion, None
            if s.diversity is not None:
                pool = max(s.candidates or per_stage, s.limit)
                prefetch = [qm.Prefetch(prefetch=prefetch, query=fusion, limit=pool)]
                query = qm.NearestQuery(
                    nearest=dense, mmr=qm.Mmr(diversity=s.diversity, candidates_limit=pool)
                )
        elif s.diversity is not None:
            pool = max(s.candidates or s.limit, s.limit)
            query = qm.NearestQuery(nearest=dense, mmr=qm.Mmr(diversity=s.diversity, candidates_limit=pool))
        else:
            query = dense
        with self._io:
            hits = self.client.query_points(
                physical,
                query=query,
                prefetch=prefetch,
                using=using,
                query_filter=s.filter,
                limit=s.limit,
                with_payload=s.with_payload,
                score_threshold=s.score_threshold,
                search_params=params,
            ).points
        return [_record(h) for h in hits]

    def scroll(self, physical: str, page: Page) -> tuple[list[Record], str | None]:
        with self._io:
            records, nxt = self.client.scroll(
                physical,
                scroll_filter=page.filter,
                limit=page.limit,
                offset=page.offset,
                with_payload=page.with_payload,
                with_vectors=page.with_vectors,
            )
        return [_record(r, page.with_vectors) for r in records], None if nxt is None else str(nxt)

    def count(self, physical: str, flt: qm.Filter) -> int:
        with self._io:
            return self.client.count(physical, count_filter=flt, exact=True).count

    # --- collection records -----------------------------------------------------------------------
    def meta_get(self, key: str) -> dict[str, Any] | None:
        with self._io:
            records = self.client.retrieve(META_COLLECTION, [key], with_payload=True)
        return dict(records[0].payload) if records and records[0].payload else None

    def meta_put(self, key: str, tenant: str, doc: Mapping[str, Any]) -> None:
        point = qm.PointStruct(id=key, vector=[1.0], payload={**doc, "tenant": tenant})
        with self._io:
            self.client.upsert(META_COLLECTION, points=[point], wait=True)

    def meta_delete(self, key: str) -> None:
        with self._io:
            self.client.delete(META_COLLECTION, points_selector=qm.PointIdsList(points=[key]), wait=True)

    def meta_list(self, tenant: str | None) -> list[dict[str, Any]]:
        flt = None
        if tenant is not None:
            flt = qm.Filter(must=[qm.FieldCondition(key="tenant", match=qm.MatchValue(value=tenant))])
        out: list[dict[str, Any]] = []
        offset: Any = None
        while True:
            with self._io:
                records, offset = self.client.scroll(
                    META_COLLECTION, scroll_filter=flt, limit=256, offset=offset, with_payload=True
                )
            out += [dict(r.payload) for r in records if r.payload]
            if offset is None:
                return out

    # --- query log --------------------------------------------------------------------------------
    def _log_key(self, key: str) -> qm.FieldCondition:
        return qm.FieldCondition(key="key", match=qm.MatchValue(value=key))

    def log_put(self, key: str, slot_id: str, text: str, at: float) -> None:
        self._table(QUERY_LOG_COLLECTION, "key")
        point = qm.PointStruct(id=slot_id, vector=[1.0], payload={"key": key, "text": text, "at": at})
        with self._io:
            self.client.upsert(QUERY_LOG_COLLECTION, points=[point], wait=False)

    def log_recall(self, key: str, since: float, limit: int) -> list[str]:
        self._table(QUERY_LOG_COLLECTION, "key")
        stale = qm.Filter(must=[self._log_key(key), qm.FieldCondition(key="at", range=qm.Range(lt=since))])
        with self._io:
            self.client.delete(
                QUERY_LOG_COLLECTION, points_selector=qm.FilterSelector(filter=stale), wait=True
            )
        texts: list[str] = []
        offset: Any = None
        while len(texts) < limit:
            with self._io:
                records, offset = self.client.scroll(
                    QUERY_LOG_COLLECTION,
                    scroll_filter=qm.Filter(must=[self._log_key(key)]),
                    limit=min(256, limit - len(texts)),
                    offset=offset,
                    with_payload=True,
                )
            texts += [r.payload["text"] for r in records if r.payload]  # stale ones were deleted above
            if offset is None:
                break
        return texts

    def log_forget(self, key: str) -> None:
        with self._io:
            if not self.client.collection_exists(QUERY_LOG_COLLECTION):
                return
            selector = qm.FilterSelector(filter=qm.Filter(must=[self._log_key(key)]))
            self.client.delete(QUERY_LOG_COLLECTION, points_selector=selector, wait=True)

    def log_entries(self) -> list[tuple[str, str, str, float]]:
        with self._io:
            if not self.client.collection_exists(QUERY_LOG_COLLECTION):
                return []
        out: list[tuple[str, str, str, float]] = []
        offset: Any = None
        while True:
            with self._io:
                records, offset = self.client.scroll(
                    QUERY_LOG_COLLECTION, limit=256, offset=offset, with_payload=True
                )
            out += [
                (r.payload["key"], str(r.id), r.payload["text"], r.payload["at"])
                for r in records
                if r.payload
            ]
            if offset is None:
                return out

    def flush(self) -> None:
        return None  # the server persists on its own schedule; `wait=True` writes are acknowledged durable

    def close(self) -> None:
        self.client.close()
