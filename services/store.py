"""Tenant-scoped vector collections on Qdrant, through the public qdrant-client API only.

A collection is (tenant, name). Its stable Qdrant name is an **alias** derived from both, pointing at a
**physical** collection tied to one model version; a model upgrade builds a second physical
collection behind the same alias and switches the alias atomically at cutover, keeping the old one
for rollback. What each collection is (model, dimension, physicals, migration state) is kept in
Qdrant itself, in one small metadata collection, so any gateway replica or worker can serve any
request without local state.

Tenancy is enforced twice: a tenant can only name its own collections (the alias and metadata key
are derived from its tenant id, and another tenant's collection reads as missing: 404), and every
point carries a reserved `_tenant` payload key that every read, delete and scroll ANDs into the
caller's filter. Payload keys starting with `_` are reserved: callers can neither write nor filter
on them (400).

Server vs local mode: `QdrantClient(url=...)` when `qdrant_url` is set, otherwise local mode under
`data_dir/qdrant` (one process owns that path). Local mode is an exact brute-force search that
ignores quantization (`ScalarQuantization`/`BinaryQuantization` are accepted and dropped),
`on_disk` vectors, HNSW/optimizer settings and search params, and keeps payload indexes only as
metadata (they speed nothing up); aliases, filters and counts behave as on the server.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from hashlib import sha256
from typing import Any, Literal, NamedTuple, TypeVar

import numpy as np
from pydantic import ValidationError
from qdrant_client import QdrantClient
from qdrant_client import models as qm

from services.blobs import is_digest
from services.config import Settings
from services.errors import Conflict, Inconsistent, InvalidInput, NotFound, StaleTarget

T = TypeVar("T")
RESERVED_PREFIX = "_"
TENANT_KEY = "_tenant"
DOC_ID_KEY = "_doc_id"
SOURCE_KEY = "_source"
SOURCE_KINDS = ("text", "image", "video")

META_COLLECTION = "ef_meta"
QUERY_LOG_COLLECTION = "ef_querylog"
ALIAS_PREFIX = "efc_"
PHYSICAL_PREFIX = "efp_"
# point ids are uuid5 under this namespace: changing it would duplicate every re-indexed document
ID_NAMESPACE = uuid.UUID("6f1d3c5e-2b7a-4e0c-9a51-0c8e7b9d4f21")

DISTANCES: dict[str, qm.Distance] = {
    "cosine": qm.Distance.COSINE,
    "dot": qm.Distance.DOT,
    "euclid": qm.Distance.EUCLID,
    "manhattan": qm.Distance.MANHATTAN,
}
Quantization = Literal["none", "scalar", "binary"]
QUANTIZATIONS: tuple[str, ...] = ("none", "scalar", "binary")
INDEX_SCHEMAS: tuple[str, ...] = tuple(s.value for s in qm.PayloadSchemaType)

MAX_TOP_K = 1000
MAX_DIMENSION = 65536
MAX_DOC_ID_CHARS = 512
MAX_FILTER_DEPTH = 16
WRITE_BATCH = 256
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_SLUG_RE = re.compile(r"[^a-z0-9]+")


class PointIn(NamedTuple):
    """One document to write. `source` is what re-embedding needs: {"text": str} or {"image": digest}."""

    doc_id: str
    vector: Sequence[float] | np.ndarray
    payload: Mapping[str, Any] | None = None
    source: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class StoredPoint:
    """A point as callers see it: their doc id and payload, never the reserved keys."""

    id: str
    payload: dict[str, Any]
    source: dict[str, Any] | None = None
    score: float | None = None
    vector: list[float] | None = None


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


# --- naming and validation (pure functions: the gateway may call them to fail fast) ------------


def validate_name(name: object) -> str:
    if not isinstance(name, str) or _NAME_RE.fullmatch(name) is None:
        raise InvalidInput("collection name must match [a-z0-9][a-z0-9_-]{0,62}", field="name")
    return name


def _tenant_hash(tenant: str) -> str:
    if not isinstance(tenant, str) or not tenant:
        raise InvalidInput("tenant must be a non-empty string", field="tenant")
    return sha256(tenant.encode()).hexdigest()[:32]


def alias_name(tenant: str, name: str) -> str:
    """`efc_<hash(tenant)>_<name>`: fixed-width hash then a validated name, so no two tenants collide."""
    return f"{ALIAS_PREFIX}{_tenant_hash(tenant)}_{validate_name(name)}"


def _slug(value: str, limit: int) -> str:
    return _SLUG_RE.sub("-", value.lower()).strip("-")[:limit] or "x"


def physical_name(tenant: str, name: str, model: str, version: str) -> str:
    """A fresh physical name; readable for operators, unique by its random suffix."""
    return (
        f"{PHYSICAL_PREFIX}{_tenant_hash(tenant)[:16]}_{validate_name(name)}_"
        f"{_slug(model, 40)}_{_slug(version, 16)}_{uuid.uuid4().hex[:8]}"
    )


def point_id(tenant: str, name: str, doc_id: str) -> str:
    """uuid5 over (tenant, collection, doc id): a retried write lands on the same point, in any physical."""
    return str(uuid.uuid5(ID_NAMESPACE, json.dumps([tenant, name, doc_id])))


def _meta_id(tenant: str, name: str) -> str:
    return str(uuid.uuid5(ID_NAMESPACE, json.dumps(["collection", tenant, name])))


def _validate_doc_id(doc_id: object) -> str:
    if not isinstance(doc_id, str) or not doc_id or len(doc_id) > MAX_DOC_ID_CHARS:
        raise InvalidInput(f"document id must be a string of 1..{MAX_DOC_ID_CHARS} characters", field="id")
    return doc_id


def _is_reserved(key: str) -> bool:
    # a quoted JSON-path root (`"_tenant".x`) names the same key as the bare one
    return key.lstrip('"').startswith(RESERVED_PREFIX)


def _validate_payload(payload: Mapping[str, Any] | None) -> dict[str, Any]:
    if payload is None:
        return {}
    if not isinstance(payload, Mapping):
        raise InvalidInput("payload must be an object", field="payload")
    for key in payload:
        if not isinstance(key, str) or _is_reserved(key):
            raise InvalidInput(
                f"payload key {key!r} is reserved (keys may not start with '_')", field="payload"
            )
    return dict(payload)


def _validate_source(source: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if source is None:
        return None
    if not isinstance(source, Mapping) or len(source) != 1:
        raise InvalidInput("source must name exactly one of text, image, video", field="source")
    ((kind, value),) = source.items()
    if kind not in SOURCE_KINDS:
        raise InvalidInput(f"unknown source kind {kind!r}", field="source")
    if kind == "text" and not isinstance(value, str):
        raise InvalidInput("text source must be a string", field="source")
    if kind != "text" and not is_digest(value):
        raise InvalidInput(f"{kind} source must be a blob digest", field="source")
    return {kind: value}


def _conditions(part: Any) -> list[Any]:
    if part is None:
        return []
    return list(part) if isinstance(part, list) else [part]


def _check_filter(flt: qm.Filter, depth: int = 0) -> None:
    """Reject reserved keys wherever a filter names a payload key (a nested filter's keys are relative)."""
    if depth > MAX_FILTER_DEPTH:
        raise InvalidInput(f"filter nested deeper than {MAX_FILTER_DEPTH}", field="filter")
    conds = [*_conditions(flt.must), *_conditions(flt.should), *_conditions(flt.must_not)]
    if flt.min_should is not None:
        conds += flt.min_should.conditions
    for cond in conds:
        if isinstance(cond, qm.Filter):
            _check_filter(cond, depth + 1)
            continue
        key = None
        if isinstance(cond, qm.FieldCondition):
            key = cond.key
        elif isinstance(cond, qm.IsEmptyCondition):
            key = cond.is_empty.key
        elif isinstance(cond, qm.IsNullCondition):
            key = cond.is_null.key
        elif isinstance(cond, qm.NestedCondition):
            key = cond.nested.key
        if key is not None and _is_reserved(key):
            raise InvalidInput(f"filter may not name reserved key {key!r}", field="filter")


def parse_filter(flt: qm.Filter | Mapping[str, Any] | None) -> qm.Filter | None:
    """A caller's filter in Qdrant's JSON filter model, validated; 400 (field `filter`) when malformed."""
    if flt is None:
        return None
    if isinstance(flt, Mapping):
        try:
            flt = qm.Filter.model_validate(dict(flt))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "top level"
            raise InvalidInput(f"malformed filter at {where}: {first['msg']}", field="filter") from None
    if not isinstance(flt, qm.Filter):
        raise InvalidInput("filter must be an object", field="filter")
    _check_filter(flt)
    return flt


def _tenant_filter(tenant: str, flt: qm.Filter | None = None, ids: Sequence[str] | None = None) -> qm.Filter:
    must: list[Any] = [qm.FieldCondition(key=TENANT_KEY, match=qm.MatchValue(value=tenant))]
    if ids is not None:
        must.append(qm.HasIdCondition(has_id=list(ids)))
    if flt is not None:
        must.append(flt)
    return qm.Filter(must=must)


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


def _quantization_config(quantization: str) -> qm.QuantizationConfig | None:
    if quantization == "scalar":
        return qm.ScalarQuantization(
            scalar=qm.ScalarQuantizationConfig(type=qm.ScalarType.INT8, quantile=0.99, always_ram=True)
        )
    if quantization == "binary":
        return qm.BinaryQuantization(binary=qm.BinaryQuantizationConfig(always_ram=True))
    return None


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _to_point(record: qm.Record | qm.ScoredPoint, with_vectors: bool = False) -> StoredPoint:
    payload = dict(record.payload or {})
    doc_id = payload.get(DOC_ID_KEY, str(record.id))
    source = payload.get(SOURCE_KEY)
    vector = None
    if with_vectors and isinstance(record.vector, list):
        vector = [float(v) for v in record.vector]
    return StoredPoint(
        id=doc_id,
        payload={k: v for k, v in payload.items() if not _is_reserved(k)},
        source=source,
        score=getattr(record, "score", None),
        vector=vector,
    )


class VectorStore:
    """Collections, points and searches for many tenants on one Qdrant (server or local).

    Sync on purpose: the gateway calls it in a thread, Celery tasks call it directly. Metadata changes
    (create, delete, switch, migrations) are serialised per process; replicas racing on the same
    collection's metadata are last-writer-wins on the keys they touch.
    """

    def __init__(self, client: QdrantClient, *, serialize: bool = False) -> None:
        """`serialize` holds one lock around every call: local mode is not safe for concurrent threads."""
        self.client = client
        self._admin = threading.RLock()
        self._tables: set[str] = set()  # key-value tables known to exist: checked once per process
        self._io: AbstractContextManager[Any] = self._admin if serialize else nullcontext()
        self._ensure_meta()

    @classmethod
    def from_settings(cls, settings: Settings) -> VectorStore:
        if settings.qdrant_url:
            return cls(QdrantClient(url=settings.qdrant_url, api_key=settings.qdrant_api_key))
        path = settings.data_dir / "qdrant"
        path.mkdir(parents=True, exist_ok=True)
        # the gateway calls from a thread pool: local mode is plain dicts over sqlite, whose same-thread
        # check (on where sqlite is not built thread-safe) would refuse; our lock serialises instead
        client = QdrantClient(path=str(path), force_disable_check_same_thread=True)
        return cls(client, serialize=True)

    def close(self) -> None:
        self.client.close()

    # --- metadata ------------------------------------------------------------------------------

    def _ensure_meta(self) -> None:
        self._ensure_table(META_COLLECTION, "tenant")

    def _ensure_table(self, collection: str, key: str) -> None:
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

    def load_collection(self, tenant: str, name: str) -> CollectionInfo:
        """The collection's metadata, one read (no point count): the snapshot plans are made from."""
        return self._load(tenant, name)

    def _find(self, tenant: str, name: str) -> CollectionInfo | None:
        validate_name(name)
        with self._io:
            records = self.client.retrieve(META_COLLECTION, [_meta_id(tenant, name)], with_payload=True)
        if not records or not records[0].payload:
            return None
        info = CollectionInfo.from_payload(records[0].payload)
        if info.tenant != tenant or info.name != name:  # cannot happen with uuid5 ids; never trust it
            return None
        return info

    def _load(self, tenant: str, name: str) -> CollectionInfo:
        info = self._find(tenant, name)
        if info is None:
            raise NotFound(f"collection {name!r} not found", field="name")
        return info

    def _save(self, info: CollectionInfo) -> None:
        point = qm.PointStruct(id=_meta_id(info.tenant, info.name), vector=[1.0], payload=info.to_payload())
        with self._io:
            self.client.upsert(META_COLLECTION, points=[point], wait=True)

    # --- collections ---------------------------------------------------------------------------

    def create_collection(
        self,
        tenant: str,
        name: str,
        model: str,
        version: str,
        dimension: int,
        distance: str = "cosine",
        on_disk: bool = False,
        quantization: Quantization = "none",
        query_log: bool = False,
    ) -> CollectionInfo:
        """A new collection with one physical collection behind its alias; 409 if the name is taken."""
        alias = alias_name(tenant, name)
        with self._admin:
            if self._find(tenant, name) is not None:
                raise Conflict(f"collection {name!r} already exists", field="name")
            phys = self._create_physical(
                tenant, name, model, version, dimension, distance, on_disk, quantization
            )
            try:
                self._point_alias(alias, phys.name)
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
                with self._io:
                    self.client.delete_collection(phys.name)
                raise
        return info

    def list_collections(self, tenant: str) -> list[CollectionInfo]:
        _tenant_hash(tenant)  # validates the tenant
        flt = qm.Filter(must=[qm.FieldCondition(key="tenant", match=qm.MatchValue(value=tenant))])
        infos: list[CollectionInfo] = []
        offset: Any = None
        while True:
            with self._io:
                records, offset = self.client.scroll(
                    META_COLLECTION, scroll_filter=flt, limit=256, offset=offset, with_payload=True
                )
            infos += [CollectionInfo.from_payload(r.payload) for r in records if r.payload]
            if offset is None:
                break
        return sorted((i for i in infos if i.tenant == tenant), key=lambda i: i.name)

    def get_collection(self, tenant: str, name: str) -> CollectionInfo:
        """The collection's metadata with its live point count (through the alias, tenant-scoped)."""
        info = self._load(tenant, name)
        with self._io:
            count = self.client.count(info.physical, count_filter=_tenant_filter(tenant), exact=True).count
        return replace(info, points_count=count)

    def delete_collection(self, tenant: str, name: str) -> None:
        """Forget the collection first (so it is gone for readers at once), then drop alias and vectors."""
        with self._admin:
            info = self._load(tenant, name)
            with self._io:
                self.client.delete(
                    META_COLLECTION,
                    points_selector=qm.PointIdsList(points=[_meta_id(tenant, name)]),
                    wait=True,
                )
                if self._alias_target(info.alias) is not None:
                    self.client.update_collection_aliases(
                        [qm.DeleteAliasOperation(delete_alias=qm.DeleteAlias(alias_name=info.alias))]
                    )
                for phys in info.physicals:
                    self.client.delete_collection(phys.name)
            self.forget_queries(tenant, name)

    def set_migration(
        self, tenant: str, name: str, migration: Mapping[str, Any] | None, status: str | None = None
    ) -> CollectionInfo:
        """Persist the migration lifecycle's state slot (and optionally the collection status)."""
        with self._admin:
            info = self._load(tenant, name)
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
        self._ensure_table(QUERY_LOG_COLLECTION, "key")
        point = qm.PointStruct(
            id=str(uuid.uuid5(ID_NAMESPACE, json.dumps(["query", tenant, name, slot]))),
            vector=[1.0],
            payload={"key": _meta_id(tenant, name), "text": text, "at": at},
        )
        with self._io:
            self.client.upsert(QUERY_LOG_COLLECTION, points=[point], wait=False)

    def logged_queries(self, tenant: str, name: str, since: float, limit: int) -> list[str]:
        """Up to `limit` logged texts of this (tenant, collection) written after `since`; older ones are
        deleted on the way (the retention limit)."""
        self._ensure_table(QUERY_LOG_COLLECTION, "key")
        key = qm.FieldCondition(key="key", match=qm.MatchValue(value=_meta_id(tenant, name)))
        stale = qm.Filter(must=[key, qm.FieldCondition(key="at", range=qm.Range(lt=since))])
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
                    scroll_filter=qm.Filter(must=[key]),
                    limit=min(256, limit - len(texts)),
                    offset=offset,
                    with_payload=True,
                )
            texts += [r.payload["text"] for r in records if r.payload]  # stale ones were deleted above
            if offset is None:
                break
        return texts

    def forget_queries(self, tenant: str, name: str) -> None:
        with self._io:
            if not self.client.collection_exists(QUERY_LOG_COLLECTION):
                return
            key = qm.FieldCondition(key="key", match=qm.MatchValue(value=_meta_id(tenant, name)))
            self.client.delete(
                QUERY_LOG_COLLECTION,
                points_selector=qm.FilterSelector(filter=qm.Filter(must=[key])),
                wait=True,
            )

    def ensure_payload_index(self, tenant: str, name: str, field: str, schema: str) -> None:
        """Index a payload field on every physical collection, and on those built later by migrations."""
        if not isinstance(field, str) or not field or _is_reserved(field):
            raise InvalidInput("index field must be a non-reserved payload key", field="field")
        if schema not in INDEX_SCHEMAS:
            raise InvalidInput(f"index schema must be one of {', '.join(INDEX_SCHEMAS)}", field="schema")
        with self._admin:
            info = self._load(tenant, name)
            with self._io:
                for phys in info.physicals:
                    self.client.create_payload_index(
                        phys.name, field, qm.PayloadSchemaType(schema), wait=True
                    )
            if info.indexes.get(field) != schema:
                self._save(replace(info, indexes={**info.indexes, field: schema}))

    # --- physical collections (migrations) -----------------------------------------------------

    def _create_physical(
        self,
        tenant: str,
        name: str,
        model: str,
        version: str,
        dimension: int,
        distance: str,
        on_disk: bool,
        quantization: str,
        indexes: Mapping[str, str] | None = None,
    ) -> PhysicalInfo:
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
        if distance not in DISTANCES:
            raise InvalidInput(f"distance must be one of {', '.join(DISTANCES)}", field="distance")
        if quantization not in QUANTIZATIONS:
            raise InvalidInput(
                f"quantization must be one of {', '.join(QUANTIZATIONS)}", field="quantization"
            )
        phys = PhysicalInfo(
            name=physical_name(tenant, name, model, version),
            model=model,
            version=version,
            dimension=dimension,
            distance=distance,
            on_disk=bool(on_disk),
            quantization=quantization,
            created_at=_now(),
        )
        with self._io:
            self.client.create_collection(
                phys.name,
                vectors_config=qm.VectorParams(
                    size=dimension, distance=DISTANCES[distance], on_disk=phys.on_disk
                ),
                quantization_config=_quantization_config(quantization),
            )
            # the tenant condition rides on every request: on the server it must be an index probe
            for key, schema in {TENANT_KEY: "keyword", **(indexes or {})}.items():
                self.client.create_payload_index(phys.name, key, qm.PayloadSchemaType(schema), wait=True)
        return phys

    def create_physical(
        self,
        tenant: str,
        name: str,
        model: str,
        version: str,
        dimension: int,
        distance: str | None = None,
        on_disk: bool | None = None,
        quantization: Quantization | None = None,
    ) -> PhysicalInfo:
        """A new, empty physical collection for a migration target; unset options follow the current one."""
        with self._admin:
            info = self._load(tenant, name)
            cur = info.current
            phys = self._create_physical(
                tenant,
                name,
                model,
                version,
                dimension,
                distance=cur.distance if distance is None else distance,
                on_disk=cur.on_disk if on_disk is None else on_disk,
                quantization=cur.quantization if quantization is None else quantization,
                indexes=info.indexes,
            )
            try:
                self._save(replace(info, physicals=(*info.physicals, phys)))
            except BaseException:
                with self._io:
                    self.client.delete_collection(phys.name)
                raise
        return phys

    def _alias_target(self, alias: str) -> str | None:
        with self._io:
            aliases = self.client.get_aliases().aliases
        return next((a.collection_name for a in aliases if a.alias_name == alias), None)

    def _point_alias(self, alias: str, physical: str) -> None:
        """Point `alias` at `physical` in one alias request, so no reader ever finds it missing."""
        ops: list[qm.CreateAliasOperation | qm.DeleteAliasOperation] = []
        if self._alias_target(alias) is not None:
            ops.append(qm.DeleteAliasOperation(delete_alias=qm.DeleteAlias(alias_name=alias)))
        ops.append(
            qm.CreateAliasOperation(create_alias=qm.CreateAlias(collection_name=physical, alias_name=alias))
        )
        with self._io:
            self.client.update_collection_aliases(ops)

    def switch_alias(
        self,
        tenant: str,
        name: str,
        physical: str,
        migration: Mapping[str, Any] | None = None,
        status: str | None = None,
    ) -> CollectionInfo:
        """Cutover (or rollback): reads move to `physical`; the other physicals are kept.

        The live physical, the migration slot and the status change in ONE metadata write: readers plan
        from that record (services.migration.state), so none can see the new physical with the old
        migration state. The Qdrant alias follows for operators' tools; no read path uses it.
        """
        with self._admin:
            info = self._load(tenant, name)
            info.physical_info(physical)  # 404 unless it belongs to this collection
            self._point_alias(info.alias, physical)
            info = replace(info, physical=physical)
            if migration is not None:
                info = replace(info, migration=json.loads(json.dumps(migration)))
            if status is not None:
                info = replace(info, status=status)
            self._save(info)  # a crash here leaves the alias ahead of the metadata: retrying repairs it
        return info

    def drop_physical(self, tenant: str, name: str, physical: str) -> CollectionInfo:
        """Delete a physical collection no longer needed for rollback; 409 for the one the alias serves."""
        with self._admin:
            info = self._load(tenant, name)
            info.physical_info(physical)
            if physical == info.physical:
                raise Conflict("cannot drop the physical collection the alias points at", field="physical")
            info = replace(info, physicals=tuple(p for p in info.physicals if p.name != physical))
            self._save(info)
            with self._io:
                self.client.delete_collection(physical)
        return info

    # --- points --------------------------------------------------------------------------------

    def _target(
        self, tenant: str, name: str, physical: str | None
    ) -> tuple[CollectionInfo, str, PhysicalInfo]:
        """(info, Qdrant name to address, its physical): the live physical by default, or a named one.
        Addressed by name, never through the alias, so the metadata read here is the only source."""
        info = self._load(tenant, name)
        phys = info.current if physical is None else info.physical_info(physical)
        return info, phys.name, phys

    def _on_physical(self, tenant: str, name: str, physical: str, call: Callable[..., T], **kwargs: Any) -> T:
        """Run a Qdrant call on a physical collection read from metadata a moment ago; if it was dropped
        in between, say so as `StaleTarget` (the caller re-plans) instead of a raw client error."""
        try:
            with self._io:
                return call(physical, **kwargs)
        except Exception as exc:
            info = self._find(tenant, name)
            if info is None or all(p.name != physical for p in info.physicals):
                gone = f"collection {name!r} no longer has {physical!r}"
                raise StaleTarget(gone, field="physical") from exc
            raise

    def upsert(
        self,
        tenant: str,
        name: str,
        points: Sequence[PointIn | tuple[Any, ...]],
        physical: str | None = None,
    ) -> int:
        """Write documents (idempotent: deterministic ids); returns how many were written."""
        _, target, phys = self._target(tenant, name, physical)
        try:
            items = [PointIn(*p) for p in points]
        except TypeError:
            raise InvalidInput("points are (id, vector, payload?, source?)", field="points") from None
        if not items:
            return 0
        doc_ids = [_validate_doc_id(p.doc_id) for p in items]
        if len(set(doc_ids)) != len(doc_ids):
            raise InvalidInput("document ids must be unique within one write", field="id")
        vectors = _vectors([p.vector for p in items], phys.dimension, phys.name)
        structs = []
        for p, vec in zip(items, vectors, strict=True):
            payload = _validate_payload(p.payload)
            payload[TENANT_KEY] = tenant
            payload[DOC_ID_KEY] = p.doc_id
            source = _validate_source(p.source)
            if source is not None:
                payload[SOURCE_KEY] = source
            structs.append(
                qm.PointStruct(id=point_id(tenant, name, p.doc_id), vector=vec.tolist(), payload=payload)
            )
        for start in range(0, len(structs), WRITE_BATCH):
            part = structs[start : start + WRITE_BATCH]
            self._on_physical(tenant, name, target, self.client.upsert, points=part, wait=True)
        return len(structs)

    def delete_points(
        self,
        tenant: str,
        name: str,
        ids: Sequence[str] | None = None,
        filter: qm.Filter | Mapping[str, Any] | None = None,
        physical: str | None = None,
    ) -> None:
        """Delete by doc ids and/or filter (both: their intersection). By default from every physical
        collection, so a document deleted during a migration is gone from both sides; the metadata is
        read again afterwards, and a physical created meanwhile (a migration that started) is cleaned too,
        so a backfill that read the document before the delete cannot bring it back."""
        if ids is None and filter is None:
            raise InvalidInput("delete needs ids or a filter", field="ids")
        flt = parse_filter(filter)
        pids = None if ids is None else [point_id(tenant, name, _validate_doc_id(i)) for i in ids]
        if pids == []:
            return
        selector = qm.FilterSelector(filter=_tenant_filter(tenant, flt, pids))
        done: set[str] = set()
        for _ in range(4):
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
                    self._on_physical(
                        tenant, name, target, self.client.delete, points_selector=selector, wait=True
                    )
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
        _, target, _ = self._target(tenant, name, physical)
        pids = [point_id(tenant, name, _validate_doc_id(i)) for i in ids]
        if not pids:
            return []
        with self._io:
            records = self.client.retrieve(target, pids, with_payload=True, with_vectors=with_vectors)
        by_id = {str(r.id): r for r in records if (r.payload or {}).get(TENANT_KEY) == tenant}
        return [_to_point(by_id[p], with_vectors) for p in pids if p in by_id]

    def search(
        self,
        tenant: str,
        name: str,
        vector: Sequence[float] | np.ndarray,
        top_k: int = 10,
        filter: qm.Filter | Mapping[str, Any] | None = None,
        with_payload: bool = True,
        score_threshold: float | None = None,
        physical: str | None = None,
    ) -> list[StoredPoint]:
        """Nearest documents to `vector` within the tenant's points matching `filter`, best first."""
        if not isinstance(top_k, int) or not 0 < top_k <= MAX_TOP_K:
            raise InvalidInput(f"top_k must be in 1..{MAX_TOP_K}", field="top_k")
        flt = parse_filter(filter)
        _, target, phys = self._target(tenant, name, physical)
        query = _vectors([vector], phys.dimension, phys.name)[0]
        selector: bool | list[str] = True if with_payload else [DOC_ID_KEY]
        hits = self._on_physical(
            tenant,
            name,
            target,
            self.client.query_points,
            query=query.tolist(),
            query_filter=_tenant_filter(tenant, flt),
            limit=top_k,
            with_payload=selector,
            score_threshold=score_threshold,
        ).points
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
        if not isinstance(limit, int) or limit < 1:
            raise InvalidInput("limit must be a positive integer", field="limit")
        flt = parse_filter(filter)
        _, target, _ = self._target(tenant, name, physical)
        selector: bool | list[str] = True if with_payload else [DOC_ID_KEY]
        with self._io:
            records, next_offset = self.client.scroll(
                target,
                scroll_filter=_tenant_filter(tenant, flt),
                limit=limit,
                offset=offset,
                with_payload=selector,
                with_vectors=with_vectors,
            )
        return [_to_point(r, with_vectors) for r in records], None if next_offset is None else str(
            next_offset
        )

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
