"""Qdrant Edge in-process, behind plain Python types: one `EdgeShard` is one directory holding one collection.

Pinned to `qdrant-edge-py==0.9.0` (beta). Filters come in as `qdrant_client.models.Filter` and are converted
by `edge_filter` alone (Edge has its own model classes and rejects qdrant-client's and plain dicts). Ids go
in as UUID strings, decimal strings or non-negative ints and always come back as `str`.

Behaviours that surprised us (measured on 2 vCPU; details in docs/qdrant-edge-notes.md):

* Every call holds the GIL. `optimize()` over 20k random 384-d points took 29.3 s and a 1 ms ticker thread
  did not run once during it; an exact top-10 over 100k points (18 ms) stalls other threads just as long.
  `asyncio.to_thread` does not help: the event loop cannot run Python code while Edge holds the GIL.
* Nothing optimizes in the background. Points stay in one appendable, brute-force segment until `optimize()`,
  and HNSW and quantization are built only for segments above the indexing threshold (~10 MB of vectors by
  default: 6,000 x 384-d stays plain, 7,000 gets HNSW).
* Quantized search (originals in RAM) does not rescore unless asked: scalar int8, 2k x 384-d, recall@10 0.934
  unrescored, 0.976 with `rescore=True, oversampling=3`. Binary on random 384-d data: 0.31 (x3), 0.57 (x10).
* `MatchValue(True)` is turned into the integer 1 by the bindings, so no boolean payload can be matched; this
  module refuses boolean matches instead of silently returning nothing.
* A second `load` of an open directory fails (WAL lock, `WouldBlock`), in-process or from another process.
  With `wal=False` there is no lock: a second open succeeds and the writes of one of them are lost.
* Edge stores NaN vectors and sparse vectors with duplicate indices; this module rejects both.
* Collection-wide IDF still counts replaced and deleted points until `optimize()`; an IDF corpus filter
  (`idf_corpus`) gives live statistics, the same as a Qdrant server's. MMR on the sparse vector fails
  ("vector data config for vector bm25 not found"); MMR over a fused prefetch works.

One module over the 450-line guide on purpose: it is the only file that imports `qdrant_edge`, so a change
of the beta API touches this file alone.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import qdrant_edge as qe
from qdrant_client import models as qm

from services.errors import EmbedfleetError, InvalidInput, NotFound

Distance = Literal["cosine", "dot", "euclid", "manhattan"]
Quantization = Literal["none", "scalar", "binary"]
IndexKind = Literal["keyword", "integer", "float", "bool", "datetime", "uuid", "text", "geo"]
SPARSE = "bm25"


class EdgeEngineError(EmbedfleetError):
    """Edge refused or failed an operation for a reason that is not the caller's input."""

    code = "edge_engine_error"


class ShardLocked(EdgeEngineError):
    """The shard directory is open elsewhere (this process or another one)."""

    code = "shard_locked"


@dataclass(frozen=True, slots=True)
class EdgeSpec:
    """How a new shard is made. `bm25` adds a sparse vector named `SPARSE` with the IDF modifier."""

    dimension: int
    distance: Distance = "cosine"
    on_disk: bool = False
    quantization: Quantization = "none"
    bm25: bool = False
    wal: bool = True
    indexing_threshold_kb: int | None = None
    search_threads: int | None = None
    hnsw_m: int = 16
    hnsw_ef_construct: int = 100
    full_scan_threshold_kb: int = 10_000  # the planner searches exactly below this many KB of matches
    indexing_threads: int = 1  # optimize() holds the GIL anyway; more threads only help in a child process


class EdgePoint(NamedTuple):
    id: str | int
    vector: Sequence[float] | np.ndarray
    payload: Mapping[str, Any] | None = None
    sparse: tuple[Sequence[int], Sequence[float]] | None = None


@dataclass(frozen=True, slots=True)
class EdgeRecord:
    id: str
    payload: dict[str, Any] | None = None
    vector: list[float] | None = None
    sparse: tuple[list[int], list[float]] | None = None


@dataclass(frozen=True, slots=True)
class EdgeHit(EdgeRecord):
    score: float = 0.0


@dataclass(frozen=True, slots=True)
class EdgeInfo:
    points: int
    segments: int
    indexed_vectors: int
    indexes: dict[str, str]


def edge_id(value: str | int | uuid.UUID) -> int | str:
    """Edge's id: a non-negative int (also from a decimal string) or a canonical UUID string."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        if value.isascii() and value.isdigit():
            return int(value)
        try:
            return str(uuid.UUID(value))
        except ValueError:
            pass
    raise InvalidInput(f"point id must be a UUID or a non-negative integer, got {value!r}", field="id")


def _iso(value: datetime | date) -> str:
    if isinstance(value, datetime) and value.tzinfo is None:
        value = value.replace(tzinfo=UTC)  # the server reads naive datetimes as UTC
    return value.isoformat()


def _geo(point: qm.GeoPoint) -> qe.GeoPoint:
    return qe.GeoPoint(lon=point.lon, lat=point.lat)


def _match(m: Any) -> Any:
    if isinstance(m, qm.MatchValue):
        if isinstance(m.value, bool):
            raise InvalidInput("qdrant-edge 0.9.0 cannot match boolean payload values", field="filter")
        return qe.MatchValue(m.value)
    if isinstance(m, qm.MatchAny):
        return qe.MatchAny(m.any)
    if isinstance(m, qm.MatchExcept):
        return qe.MatchExcept(m.except_)
    if isinstance(m, qm.MatchText):
        return qe.MatchText(m.text)
    if isinstance(m, qm.MatchTextAny):
        return qe.MatchTextAny(m.text_any)
    if isinstance(m, qm.MatchPhrase):
        return qe.MatchPhrase(m.phrase)
    if isinstance(m, qm.MatchPrefix):
        return qe.MatchPrefix(m.prefix)
    if isinstance(m, qm.MatchSubstring):
        return qe.MatchSubstring(m.substring)
    raise InvalidInput(f"unsupported match {type(m).__name__}", field="filter")


def _field(c: qm.FieldCondition) -> qe.FieldCondition:
    rng: Any = None
    if isinstance(c.range, qm.DatetimeRange):
        r = c.range
        rng = qe.RangeDateTime(
            **{
                k: _iso(v)
                for k, v in (("gte", r.gte), ("gt", r.gt), ("lte", r.lte), ("lt", r.lt))
                if v is not None
            }
        )
    elif isinstance(c.range, qm.Range):
        rng = qe.RangeFloat(gte=c.range.gte, gt=c.range.gt, lte=c.range.lte, lt=c.range.lt)
    box, radius, poly, count = c.geo_bounding_box, c.geo_radius, c.geo_polygon, c.values_count
    return qe.FieldCondition(
        key=c.key,
        match=_match(c.match) if c.match is not None else None,
        range=rng,
        geo_bounding_box=qe.GeoBoundingBox(_geo(box.top_left), _geo(box.bottom_right)) if box else None,
        geo_radius=qe.GeoRadius(_geo(radius.center), radius.radius) if radius else None,
        geo_polygon=qe.GeoPolygon(
            [_geo(p) for p in poly.exterior.points],
            [[_geo(p) for p in ring.points] for ring in poly.interiors] if poly.interiors else None,
        )
        if poly
        else None,
        values_count=qe.ValuesCount(lt=count.lt, gt=count.gt, lte=count.lte, gte=count.gte)
        if count
        else None,
        is_empty=c.is_empty,
        is_null=c.is_null,
    )


def _condition(c: Any) -> Any:
    if isinstance(c, qm.Filter):
        return _filter(c)
    if isinstance(c, qm.FieldCondition):
        return _field(c)
    if isinstance(c, qm.IsEmptyCondition):
        return qe.IsEmptyCondition(c.is_empty.key)
    if isinstance(c, qm.IsNullCondition):
        return qe.IsNullCondition(c.is_null.key)
    if isinstance(c, qm.HasIdCondition):
        return qe.HasIdCondition({edge_id(i) for i in c.has_id})
    if isinstance(c, qm.HasVectorCondition):
        return qe.HasVectorCondition(c.has_vector)
    if isinstance(c, qm.NestedCondition):
        return qe.NestedCondition(c.nested.key, _filter(c.nested.filter))
    if isinstance(c, qm.SliceCondition):
        return qe.SliceCondition(total=c.slice.total, index=c.slice.index)  # type: ignore[attr-defined]
    raise InvalidInput(f"unsupported filter condition {type(c).__name__}", field="filter")


def _conditions(part: Any) -> list[Any] | None:
    if part is None:
        return None
    return [_condition(c) for c in (part if isinstance(part, list) else [part])]


def edge_filter(flt: qm.Filter | None) -> qe.Filter | None:
    """The one translation from qdrant-client's filter model to Edge's; every condition kind maps 1:1."""
    return None if flt is None else _filter(flt)


def _filter(flt: qm.Filter) -> qe.Filter:
    ms = flt.min_should
    return qe.Filter(
        must=_conditions(flt.must),
        should=_conditions(flt.should),
        must_not=_conditions(flt.must_not),
        min_should=qe.MinShould(_conditions(ms.conditions) or [], ms.min_count) if ms is not None else None,
    )


class Bm25Encoder:
    """Edge's own offline BM25 (tokenizer, stopwords, Snowball stemmer; token ids are hashes, no vocabulary).
    Documents carry BM25 term weights; queries weigh each unique token 1.0; the shard's IDF modifier does the
    rest at query time."""

    def __init__(self, language: str = "english", k: float = 1.2, b: float = 0.75, avg_len: float = 256.0):
        self._model = qe.Bm25(qe.Bm25Config(k=k, b=b, avg_len=avg_len, language=language))

    def document(self, text: str) -> tuple[list[int], list[float]]:
        sv = self._model.embed_document(text)
        return list(sv.indices), list(sv.values)

    def query(self, text: str) -> tuple[list[int], list[float]]:
        sv = self._model.embed_query(text)
        return list(sv.indices), list(sv.values)


@contextmanager
def _engine_errors() -> Iterator[None]:
    try:
        yield
    except EmbedfleetError:
        raise
    except Exception as exc:
        if type(exc) is not Exception:  # Edge raises bare Exception; anything else is a bug here
            raise
        msg = str(exc)
        if "WouldBlock" in msg:
            raise ShardLocked(f"shard is open elsewhere: {msg}") from exc
        if "No point with id" in msg:
            raise NotFound(msg, field="id") from exc
        if any(
            k in msg for k in ("dimension error", "Not existing vector", "Validation failed", "incompatible")
        ):
            raise InvalidInput(msg) from exc
        raise EdgeEngineError(msg) from exc


def _edge_config(spec: EdgeSpec) -> qe.EdgeConfig:
    quant: Any = None
    if spec.quantization == "scalar":
        quant = qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, quantile=0.99, memory=qe.Memory.Pinned)
    elif spec.quantization == "binary":
        quant = qe.BinaryQuantizationConfig(memory=qe.Memory.Pinned)
    memory = qe.Memory.Cold if spec.on_disk else qe.Memory.Cached
    return qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(
            spec.dimension, getattr(qe.Distance, spec.distance.title()), memory=memory
        ),
        sparse_vectors={SPARSE: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)} if spec.bm25 else None,
        quantization_config=quant,
        optimizers=qe.EdgeOptimizersConfig(indexing_threshold=spec.indexing_threshold_kb)
        if spec.indexing_threshold_kb is not None
        else None,
        max_search_threads=spec.search_threads,
        wal_enabled=spec.wal,
        hnsw_config=qe.HnswIndexConfig(
            m=spec.hnsw_m,
            ef_construct=spec.hnsw_ef_construct,
            full_scan_threshold=spec.full_scan_threshold_kb,
            max_indexing_threads=spec.indexing_threads,
        ),
    )


def _payload_arg(with_payload: bool | Sequence[str]) -> bool | list[str]:
    return with_payload if isinstance(with_payload, bool) else list(with_payload)


def _record(raw: Any) -> EdgeRecord:
    vec, dense, sparse = raw.vector, None, None
    if isinstance(vec, dict):  # named form: only when the shard has a sparse vector, and only per point
        sv = vec.get(SPARSE)
        vec = vec.get("")
        sparse = (list(sv.indices), list(sv.values)) if sv is not None else None
    if vec is not None:
        dense = [float(x) for x in vec]
    return EdgeRecord(id=str(raw.id), payload=raw.payload, vector=dense, sparse=sparse)


def _hit(raw: Any) -> EdgeHit:
    r = _record(raw)
    return EdgeHit(id=r.id, payload=r.payload, vector=r.vector, sparse=r.sparse, score=float(raw.score))


class EdgeShard:
    """One Edge shard directory. Not thread-safe beyond what the GIL gives; one open per directory."""

    def __init__(self, raw: qe.EdgeShard, path: Path, dimension: int, has_sparse: bool) -> None:
        self._raw: qe.EdgeShard | None = raw
        self.path, self.dimension, self.has_sparse = path, dimension, has_sparse

    @classmethod
    def open(cls, path: str | Path, spec: EdgeSpec | None = None) -> EdgeShard:
        """Load the shard at `path`, or create it from `spec` when the directory holds none. A `spec` given
        for an existing shard is checked against it (dimension, distance, WAL) and its tunables persisted."""
        path = Path(path)
        existing = (path / "edge_config.json").exists()
        if not existing and spec is None:
            raise NotFound(f"no Edge shard at {path}")
        config = _edge_config(spec) if spec is not None else None
        with _engine_errors():
            if existing or config is None:
                raw = qe.EdgeShard.load(str(path), config)
            else:
                raw = qe.EdgeShard.create(str(path), config)
        stored = json.loads((path / "edge_config.json").read_text())
        return cls(raw, path, int(stored["vectors"][""]["size"]), SPARSE in stored.get("sparse_vectors", {}))

    @property
    def _shard(self) -> qe.EdgeShard:
        if self._raw is None:
            raise EdgeEngineError(f"shard {self.path} is closed")
        return self._raw

    def __enter__(self) -> EdgeShard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _dense(self, vector: Sequence[float] | np.ndarray) -> np.ndarray:
        arr = np.asarray(vector, dtype=np.float32)
        if arr.shape != (self.dimension,):
            raise InvalidInput(
                f"vector must have {self.dimension} dimensions, got {arr.shape}", field="vector"
            )
        if not np.isfinite(arr).all():
            raise InvalidInput("vector has non-finite values", field="vector")
        return arr

    def _sparse(self, sparse: tuple[Sequence[int], Sequence[float]]) -> qe.SparseVector:
        if not self.has_sparse:
            raise InvalidInput("this shard has no sparse vector", field="sparse")
        indices, values = [int(i) for i in sparse[0]], [float(v) for v in sparse[1]]
        if len(indices) != len(values) or len(set(indices)) != len(indices) or min(indices, default=0) < 0:
            raise InvalidInput(
                "sparse vector needs unique non-negative indices, one per value", field="sparse"
            )
        if not all(math.isfinite(v) for v in values):
            raise InvalidInput("sparse vector has non-finite values", field="sparse")
        return qe.SparseVector(indices, values)

    def upsert(self, points: Sequence[EdgePoint | tuple[Any, ...]]) -> int:
        """Insert or replace whole points (vector and payload). Returns how many were written."""
        batch = []
        for p in (EdgePoint(*t) for t in points):
            dense = self._dense(p.vector)
            vector: Any = dense if p.sparse is None else {"": dense, SPARSE: self._sparse(p.sparse)}
            batch.append(qe.Point(edge_id(p.id), vector, dict(p.payload or {})))
        if batch:
            with _engine_errors():
                self._shard.update(qe.UpdateOperation.upsert_points(batch))
        return len(batch)

    def delete_ids(self, ids: Sequence[str | int]) -> None:
        """Delete points by id; unknown ids are ignored."""
        with _engine_errors():
            self._shard.update(qe.UpdateOperation.delete_points([edge_id(i) for i in ids]))

    def delete_filter(self, flt: qm.Filter) -> None:
        with _engine_errors():
            self._shard.update(qe.UpdateOperation.delete_points_by_filter(_filter(flt)))

    def set_payload(
        self, ids: Sequence[str | int], payload: Mapping[str, Any], overwrite: bool = False
    ) -> None:
        """Merge `payload` into (with `overwrite`: replace) each point's payload; NotFound for unknown ids."""
        op = qe.UpdateOperation.overwrite_payload if overwrite else qe.UpdateOperation.set_payload
        with _engine_errors():
            self._shard.update(op([edge_id(i) for i in ids], dict(payload)))

    def retrieve(
        self, ids: Sequence[str | int], with_payload: bool | Sequence[str] = True, with_vectors: bool = False
    ) -> list[EdgeRecord]:
        """Existing points among `ids`, in the order asked; missing ids are left out."""
        with _engine_errors():
            raw = self._shard.retrieve([edge_id(i) for i in ids], _payload_arg(with_payload), with_vectors)
        return [_record(r) for r in raw]

    def scroll(
        self,
        limit: int = 100,
        offset: str | None = None,
        flt: qm.Filter | None = None,
        with_payload: bool | Sequence[str] = True,
        with_vectors: bool = False,
    ) -> tuple[list[EdgeRecord], str | None]:
        """One page in id order (integers ascending, then UUIDs); `offset` is the first id of the page (as
        returned for the next page), None at the end."""
        req = qe.ScrollRequest(
            offset=edge_id(offset) if offset is not None else None,
            limit=limit,
            filter=edge_filter(flt),
            with_payload=_payload_arg(with_payload),
            with_vector=with_vectors,
        )
        with _engine_errors():
            raw, nxt = self._shard.scroll(req)
        return [_record(r) for r in raw], None if nxt is None else str(nxt)

    def count(self, flt: qm.Filter | None = None) -> int:
        """Exact count of the points matching `flt`."""
        with _engine_errors():
            return self._shard.count(qe.CountRequest(exact=True, filter=edge_filter(flt)))

    def _run(self, req: qe.QueryRequest) -> list[EdgeHit]:
        with _engine_errors():
            return [_hit(p) for p in self._shard.query(req)]

    @staticmethod
    def _params(
        exact: bool,
        hnsw_ef: int | None,
        rescore: bool | None,
        oversampling: float | None,
        acorn: bool = False,
    ) -> qe.SearchParams:
        """`acorn`: ACORN-1, whatever the filter's estimated selectivity: a neighbour that fails the filter is
        looked through (its neighbours are explored) instead of ending the path. Without it a filter on a
        key with no payload-aware HNSW links (indexed after the graph was built) strands the search on a
        few matching nodes: 1.5 of 10 hits at 10% selectivity, recall 0.76 at 50%, measured at 100k
        points; with it 0.94 / 0.999 at ef 128 (the planner's default cut-off, 40%, misses the second)."""
        quant = None
        if rescore is not None or oversampling is not None:
            quant = qe.QuantizationSearchParams(rescore=rescore, oversampling=oversampling)
        return qe.SearchParams(
            hnsw_ef=hnsw_ef,
            exact=exact,
            quantization=quant,
            acorn=qe.AcornSearchParams(enable=True, max_selectivity=1.0) if acorn else None,
        )

    def query(
        self,
        vector: Sequence[float] | np.ndarray,
        flt: qm.Filter | None = None,
        limit: int = 10,
        offset: int = 0,
        score_threshold: float | None = None,
        with_payload: bool | Sequence[str] = True,
        with_vectors: bool = False,
        exact: bool = False,
        hnsw_ef: int | None = None,
        rescore: bool | None = None,
        oversampling: float | None = None,
        acorn: bool = False,
    ) -> list[EdgeHit]:
        """Nearest neighbours of a dense vector, best first. `rescore` matters only on quantized segments and
        defaults to off there (pass True)."""
        return self._run(
            qe.QueryRequest(
                limit=limit,
                offset=offset,
                query=qe.Query.Nearest(self._dense(vector).tolist()),
                filter=edge_filter(flt),
                score_threshold=score_threshold,
                with_payload=_payload_arg(with_payload),
                with_vector=with_vectors,
                params=self._params(exact, hnsw_ef, rescore, oversampling, acorn),
            )
        )

    @staticmethod
    def _idf(corpus: qm.Filter | None) -> qe.SearchParams | None:
        """IDF statistics over the points matching `corpus` (None: the whole shard, which counts replaced
        and deleted points until `optimize()` drops them)."""
        return None if corpus is None else qe.SearchParams(idf=qe.IdfParams(corpus=_filter(corpus)))

    def query_sparse(
        self,
        sparse: tuple[Sequence[int], Sequence[float]],
        flt: qm.Filter | None = None,
        limit: int = 10,
        with_payload: bool | Sequence[str] = True,
        *,
        score_threshold: float | None = None,
        idf_corpus: qm.Filter | None = None,
    ) -> list[EdgeHit]:
        """Sparse (BM25 with IDF) search; points sharing no token with the query are not returned.
        `idf_corpus` scopes the IDF statistics (see `_idf`)."""
        return self._run(
            qe.QueryRequest(
                limit=limit,
                query=qe.Query.Nearest(self._sparse(sparse), using=SPARSE),
                filter=edge_filter(flt),
                score_threshold=score_threshold,
                params=self._idf(idf_corpus),
                with_payload=_payload_arg(with_payload),
            )
        )

    def hybrid(
        self,
        vector: Sequence[float] | np.ndarray,
        sparse: tuple[Sequence[int], Sequence[float]],
        flt: qm.Filter | None = None,
        limit: int = 10,
        fusion: Literal["rrf", "dbsf"] = "rrf",
        rrf_k: int = 2,
        weights: tuple[float, float] | None = None,
        prefetch_limit: int | None = None,
        with_payload: bool | Sequence[str] = True,
        exact: bool = False,
        *,
        score_threshold: float | None = None,
        idf_corpus: qm.Filter | None = None,
        hnsw_ef: int | None = None,
        rescore: bool | None = None,
        oversampling: float | None = None,
        diversity: float | None = None,
        candidates: int | None = None,
        acorn: bool = False,
    ) -> list[EdgeHit]:
        """Dense and sparse prefetch (`prefetch_limit` each) fused by RRF (server default k=2; score of rank r
        (0-based) with weight w is 1 / ((r + 1) / w + k - 1)) or DBSF. `weights` are (dense, sparse). `flt`
        applies to both stages. With `diversity`, MMR on the dense vector reorders the `candidates` best
        fused points (its scores are the dense similarities)."""
        dense = self._dense(vector).tolist()
        per_stage = prefetch_limit or 4 * limit
        stages = [
            qe.Prefetch(
                limit=per_stage,
                query=qe.Query.Nearest(dense),
                params=self._params(exact, hnsw_ef, rescore, oversampling, acorn),
            ),
            qe.Prefetch(
                limit=per_stage,
                query=qe.Query.Nearest(self._sparse(sparse), using=SPARSE),
                params=self._idf(idf_corpus),
            ),
        ]
        fuse: Any = (
            qe.Fusion.Dbsf()
            if fusion == "dbsf"
            else qe.Fusion.Rrf(k=rrf_k, weights=list(weights) if weights else None)
        )
        query: Any = fuse
        if diversity is not None:
            pool = max(candidates or per_stage, limit)
            stages = [qe.Prefetch(limit=pool, prefetches=stages, query=fuse)]
            query = self._mmr_query(dense, diversity, pool)
        return self._run(
            qe.QueryRequest(
                limit=limit,
                prefetches=stages,
                query=query,
                filter=edge_filter(flt),
                score_threshold=score_threshold,
                with_payload=_payload_arg(with_payload),
            )
        )

    @staticmethod
    def _mmr_query(dense: list[float], diversity: float, candidates: int) -> qe.Mmr:
        if not 0.0 <= diversity <= 1.0:
            raise InvalidInput("diversity must be within [0, 1]", field="diversity")
        return qe.Mmr(dense, lambda_=1.0 - diversity, candidates_limit=candidates)

    def mmr(
        self,
        vector: Sequence[float] | np.ndarray,
        flt: qm.Filter | None = None,
        limit: int = 10,
        diversity: float = 0.5,
        candidates: int = 100,
        with_payload: bool | Sequence[str] = True,
        *,
        score_threshold: float | None = None,
        hnsw_ef: int | None = None,
        rescore: bool | None = None,
        oversampling: float | None = None,
        exact: bool = False,
        acorn: bool = False,
    ) -> list[EdgeHit]:
        """Maximal marginal relevance with the server's `diversity` (Edge's lambda_ = 1 - diversity); scores
        are the plain similarities, the order is MMR's. `score_threshold` bounds the candidates'
        similarity."""
        query = self._mmr_query(self._dense(vector).tolist(), diversity, max(candidates, limit))
        return self._run(
            qe.QueryRequest(
                limit=limit,
                query=query,
                filter=edge_filter(flt),
                score_threshold=score_threshold,
                params=self._params(exact, hnsw_ef, rescore, oversampling, acorn),
                with_payload=_payload_arg(with_payload),
            )
        )

    def create_payload_index(self, field: str, kind: IndexKind, is_tenant: bool = False) -> None:
        """Index a payload field (idempotent; a different kind replaces the index). `is_tenant` is for
        keyword and uuid fields that partition the data."""
        schema: Any = getattr(qe.PayloadSchemaType, kind.title())
        if is_tenant and kind == "keyword":
            schema = qe.KeywordIndexParams(is_tenant=True)
        elif is_tenant and kind == "uuid":
            schema = qe.UuidIndexParams(is_tenant=True)
        elif is_tenant:
            raise InvalidInput("only keyword and uuid indexes can be tenant indexes", field="is_tenant")
        with _engine_errors():
            self._shard.update(qe.UpdateOperation.create_field_index(field, schema))

    def info(self) -> EdgeInfo:
        with _engine_errors():
            raw = self._shard.info()
        indexes = {k: str(v.data_type).rpartition(".")[2].lower() for k, v in raw.payload_schema.items()}
        return EdgeInfo(raw.points_count, raw.segments_count, raw.indexed_vectors_count, indexes)

    def optimize(self) -> bool:
        """Build HNSW / quantization / vacuum now; True when something changed. Holds the GIL throughout."""
        with _engine_errors():
            return self._shard.optimize()

    def flush(self) -> None:
        with _engine_errors():
            self._shard.flush()

    def close(self) -> None:
        """Flush and release the directory (its lock too). Idempotent."""
        if self._raw is not None:
            raw, self._raw = self._raw, None
            with _engine_errors():
                raw.close()
