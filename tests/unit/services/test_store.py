"""VectorStore on both engines (Qdrant Edge in-process; qdrant-client's local mode standing in for a server):
deterministic ids, filters, tenancy, migrations, exactness, restarts. Every test runs on each backend."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest.mock import MagicMock

import numpy as np
import pytest
from qdrant_client import models as qm

from services.config import Settings
from services.errors import Conflict, EmbedfleetError, Inconsistent, InvalidInput, NotFound
from services.store import (
    DOC_ID_KEY,
    TENANT_KEY,
    CollectionInfo,
    EdgeBackend,
    Layout,
    Mode,
    PointIn,
    ServerBackend,
    StoreLocked,
    VectorStore,
    alias_name,
    bm25_document,
    bm25_query,
    open_store,
    parse_filter,
    point_id,
)
from services.store.backend import Search
from services.store.edge import EdgeTuning

DIM = 8
A, B = "tenant-a", "tenant-b"


# local mode warns that payload indexes do nothing there: documented in services/store/server.py
pytestmark = pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning")


def _open(kind: str, path: Path) -> VectorStore:
    if kind == "edge":
        return VectorStore(EdgeBackend(path / "edge", EdgeTuning(flush_ms=0)))
    return VectorStore(ServerBackend.local(str(path / "qdrant")))


@pytest.fixture(params=["edge", "server"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorStore]:
    s = _open(request.param, tmp_path)
    yield s
    s.close()


def _exists(store: VectorStore, physical: str) -> bool:
    backend = store.backend
    if isinstance(backend, EdgeBackend):
        return backend.meta.shard(physical) is not None and (backend.root / "shards" / physical).exists()
    assert isinstance(backend, ServerBackend)
    return backend.client.collection_exists(physical)


def _aliases(store: VectorStore) -> dict[str, str]:
    assert isinstance(store.backend, ServerBackend)
    return {a.alias_name: a.collection_name for a in store.backend.client.get_aliases().aliases}


def _vec(seed: int, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


def _docs(n: int, dim: int = DIM, offset: int = 0) -> list[PointIn]:
    return [
        PointIn(f"doc-{i}", _vec(i, dim), {"n": i, "lang": "en" if i % 2 else "fr"}, {"text": f"text {i}"})
        for i in range(offset, offset + n)
    ]


@pytest.fixture
def seeded(store: VectorStore) -> VectorStore:
    """Tenant A owns `docs` with 10 points."""
    store.create_collection(A, "docs", Layout("minilm", "1", DIM))
    store.upsert(A, "docs", _docs(10))
    return store


def _count(store: VectorStore, tenant: str, name: str) -> int:
    count = store.get_collection(tenant, name).points_count
    assert count is not None
    return count


# --- collections and aliases -------------------------------------------------------------------


def test_alias_resolves_to_the_physical_collection(store: VectorStore) -> None:
    info = store.create_collection(A, "docs", Layout("minilm", "1", DIM))
    if store.kind == "server":  # operators' tools see the alias; no read path uses it (Edge has none)
        assert _aliases(store)[info.alias] == info.physical
    assert info.alias == alias_name(A, "docs") != alias_name(B, "docs")
    assert (info.model, info.version, info.dimension, info.distance) == ("minilm", "1", DIM, "cosine")
    assert info.public()["points_count"] is None and "physical" not in info.public()


@pytest.mark.parametrize("name", ["", "Docs", "-docs", "_docs", "a/b", "../x", "a" * 64, "a b", 7])
def test_bad_collection_names_are_400(store: VectorStore, name: Any) -> None:
    with pytest.raises(InvalidInput) as exc:
        store.create_collection(A, name, Layout("minilm", "1", DIM))
    assert exc.value.field == "name"


def test_create_list_get_delete(store: VectorStore) -> None:
    store.create_collection(A, "b-docs", Layout("minilm", "1", DIM))
    store.create_collection(A, "a-docs", Layout("minilm", "1", DIM))
    with pytest.raises(Conflict):
        store.create_collection(A, "a-docs", Layout("minilm", "1", DIM))
    assert [c.name for c in store.list_collections(A)] == ["a-docs", "b-docs"]
    store.upsert(A, "a-docs", _docs(3))
    assert _count(store, A, "a-docs") == 3

    physical = store.get_collection(A, "a-docs").physical
    store.delete_collection(A, "a-docs")
    with pytest.raises(NotFound):
        store.get_collection(A, "a-docs")
    assert not _exists(store, physical)
    if store.kind == "server":
        assert alias_name(A, "a-docs") not in _aliases(store)
    assert [c.name for c in store.list_collections(A)] == ["b-docs"]
    store.create_collection(A, "a-docs", Layout("minilm", "1", DIM))  # the name is free again
    assert _count(store, A, "a-docs") == 0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"dimension": 0}, "dimensions"),
        ({"distance": "hamming"}, "distance"),
        ({"quantization": "pq"}, "quantization"),
        ({"model": ""}, "model"),
    ],
)
def test_bad_collection_options_are_400(store: VectorStore, kwargs: dict[str, Any], field: str) -> None:
    args: dict[str, Any] = {"model": "minilm", "version": "1", "dimension": DIM, **kwargs}
    with pytest.raises(InvalidInput) as exc:
        store.create_collection(A, "docs", Layout(**args))
    assert exc.value.field == field
    assert store.list_collections(A) == []


@pytest.mark.parametrize("quantization", ["none", "scalar", "binary"])
def test_quantization_and_on_disk_are_accepted(store: VectorStore, quantization: Any) -> None:
    info = store.create_collection(
        A, "q", Layout("minilm", "1", DIM, "dot", on_disk=True, quantization=quantization)
    )
    assert info.public()["quantization"] == quantization and info.current.on_disk
    store.upsert(A, "q", _docs(5))
    assert len(store.search(A, "q", _vec(1), top_k=3)) == 3


@pytest.mark.parametrize("kind", ["edge", "server"])
def test_metadata_and_points_survive_a_restart(tmp_path: Path, kind: str) -> None:
    first = _open(kind, tmp_path)
    first.create_collection(A, "docs", Layout("minilm", "1", DIM))
    first.upsert(A, "docs", _docs(4))
    first.ensure_payload_index(A, "docs", "lang", "keyword")
    first.close()
    second = _open(kind, tmp_path)  # a fresh process: everything it knows is on disk
    info = second.get_collection(A, "docs")
    assert info.points_count == 4 and info.indexes == {"lang": "keyword"}
    assert [h.id for h in second.search(A, "docs", _vec(2), top_k=1)] == ["doc-2"]
    second.close()


def test_the_embedded_store_has_one_owner(tmp_path: Path) -> None:
    """A second opener of the data directory gets a clear error (not a corrupted store), in-process or not."""
    settings = Settings(data_dir=tmp_path)
    first = open_store(settings)
    first.create_collection(A, "docs", Layout("minilm", "1", DIM))
    with pytest.raises(StoreLocked, match="in use by pid"):
        open_store(settings)
    first.close()
    again = open_store(settings)  # released on close
    assert again.get_collection(A, "docs").points_count == 0
    again.close()


def test_serves_a_thread_pool(store: VectorStore) -> None:
    """The gateway calls the store from worker threads."""
    store.create_collection(A, "docs", Layout("minilm", "1", DIM))

    def work(i: int) -> int:
        store.upsert(A, "docs", _docs(5, offset=5 * i))
        return len(store.search(A, "docs", _vec(i), top_k=3))

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(work, range(8))) == [3] * 8
    assert _count(store, A, "docs") == 40


# --- points ------------------------------------------------------------------------------------


def test_upsert_is_idempotent_with_deterministic_ids(seeded: VectorStore) -> None:
    seeded.upsert(A, "docs", _docs(10))
    seeded.upsert(A, "docs", [("doc-3", _vec(99), {"n": 333})])  # plain tuples work too
    assert _count(seeded, A, "docs") == 10
    [point] = seeded.get_points(A, "docs", ["doc-3"])
    assert point.payload == {"n": 333} and point.source is None
    record = seeded.backend.retrieve(
        seeded.get_collection(A, "docs").physical, [point_id(A, "docs", "doc-3")], False
    )
    assert record[0].payload == {"n": 333, TENANT_KEY: A, DOC_ID_KEY: "doc-3"}


def test_get_points_returns_payload_source_and_vector(seeded: VectorStore) -> None:
    points = seeded.get_points(A, "docs", ["doc-2", "missing", "doc-1"], with_vectors=True)
    assert [p.id for p in points] == ["doc-2", "doc-1"]
    assert points[0].payload == {"n": 2, "lang": "fr"} and points[0].source == {"text": "text 2"}
    v = _vec(2)
    assert points[0].vector is not None
    np.testing.assert_allclose(points[0].vector, v / np.linalg.norm(v), atol=1e-6)  # cosine: stored unit


@pytest.mark.parametrize(
    ("point", "field"),
    [
        (("", [0.0] * DIM, {}), "id"),
        (("d", [0.0] * DIM, {"_tenant": B}), "payload"),
        (("d", [0.0] * DIM, {"_doc_id": "other"}), "payload"),
        (("d", [0.0] * DIM, {}, {"image": "../../etc/passwd"}), "source"),
        (("d", [0.0] * DIM, {}, {"text": "a", "image": "b"}), "source"),
    ],
)
def test_bad_points_are_400(seeded: VectorStore, point: tuple[Any, ...], field: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        seeded.upsert(A, "docs", [point])
    assert exc.value.field == field
    assert _count(seeded, A, "docs") == 10


@pytest.mark.parametrize("vector", [[0.0] * (DIM - 1), [float("nan")] * DIM, ["x"] * DIM])
def test_vectors_that_do_not_fit_are_the_servers_inconsistency(
    seeded: VectorStore, vector: list[Any]
) -> None:
    """No caller sends vectors: a wrong one was made by the server for a collection it chose (500)."""
    with pytest.raises(Inconsistent) as exc:
        seeded.upsert(A, "docs", [("d", vector, {})])
    assert exc.value.status == 500 and exc.value.type == "server_error"
    assert _count(seeded, A, "docs") == 10


def test_delete_by_ids_and_by_filter(seeded: VectorStore) -> None:
    seeded.delete_points(A, "docs", ids=["doc-0", "doc-1", "never-written"])
    assert _count(seeded, A, "docs") == 8
    seeded.delete_points(A, "docs", filter={"must": [{"key": "n", "range": {"gte": 8}}]})
    assert sorted(p for page in seeded.scroll_ids(A, "docs") for p in page) == [
        f"doc-{i}" for i in range(2, 8)
    ]
    # ids and filter together delete their intersection
    seeded.delete_points(
        A, "docs", ids=["doc-2", "doc-3"], filter={"must": [{"key": "lang", "match": {"value": "en"}}]}
    )
    assert not seeded.get_points(A, "docs", ["doc-3"]) and seeded.get_points(A, "docs", ["doc-2"])
    with pytest.raises(InvalidInput):
        seeded.delete_points(A, "docs")


def test_payload_filters_match_and_range(seeded: VectorStore) -> None:
    def ids(flt: dict[str, Any]) -> set[str]:
        return {h.id for h in seeded.search(A, "docs", _vec(0), top_k=100, filter=flt)}

    assert ids({"must": [{"key": "lang", "match": {"value": "en"}}]}) == {f"doc-{i}" for i in (1, 3, 5, 7, 9)}
    assert ids({"must": [{"key": "n", "range": {"gt": 2, "lte": 5}}]}) == {"doc-3", "doc-4", "doc-5"}
    assert ids(
        {
            "must_not": [{"key": "n", "match": {"any": [0, 1, 2]}}],
            "must": {"key": "lang", "match": {"value": "fr"}},
        }
    ) == {
        "doc-4",
        "doc-6",
        "doc-8",
    }


def test_search_options(seeded: VectorStore) -> None:
    hits = seeded.search(A, "docs", _vec(4), top_k=3, with_payload=False)
    assert hits[0].id == "doc-4" and hits[0].payload == {} and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert [h.id for h in seeded.search(A, "docs", _vec(4), top_k=10, score_threshold=0.99)] == ["doc-4"]
    for top_k in (0, 1001, 2.5):
        with pytest.raises(InvalidInput):
            seeded.search(A, "docs", _vec(4), top_k=top_k)  # type: ignore[arg-type]
    with pytest.raises(Inconsistent):  # the server made the query vector: its mismatch is a 500
        seeded.search(A, "docs", _vec(4, DIM + 1))


@pytest.mark.parametrize(
    "flt",
    [
        {"must": [{"key": "n", "rnge": {"gt": 1}}]},
        {"must": [{"key": "n", "match": {"value": {"x": 1}}}]},
        {"should": "everything"},
        ["not", "an", "object"],
    ],
)
def test_malformed_filters_are_400(seeded: VectorStore, flt: Any) -> None:
    with pytest.raises(InvalidInput) as exc:
        seeded.search(A, "docs", _vec(0), filter=flt)
    assert exc.value.field == "filter"


def test_scroll_pages_through_every_point(seeded: VectorStore) -> None:
    seen: list[str] = []
    offset = None
    while True:
        page, offset = seeded.scroll(A, "docs", offset, limit=3)
        seen += [p.id for p in page]
        if offset is None:
            break
    assert sorted(seen) == sorted(f"doc-{i}" for i in range(10))
    assert [len(p) for p in seeded.scroll_ids(A, "docs", batch=4)] == [4, 4, 2]


def test_payload_index_is_recorded_and_reserved_fields_refused(seeded: VectorStore) -> None:
    seeded.ensure_payload_index(A, "docs", "lang", "keyword")
    seeded.ensure_payload_index(A, "docs", "lang", "keyword")
    assert seeded.get_collection(A, "docs").indexes == {"lang": "keyword"}
    with pytest.raises(InvalidInput):
        seeded.ensure_payload_index(A, "docs", TENANT_KEY, "keyword")
    with pytest.raises(InvalidInput):
        seeded.ensure_payload_index(A, "docs", "lang", "btree")


# --- tenancy -----------------------------------------------------------------------------------

RESERVED_FILTERS = [
    {"must": [{"key": "_tenant", "match": {"value": A}}]},
    {"should": [{"key": '"_tenant"', "match": {"value": A}}]},
    {"must": [{"should": [{"key": "_tenant", "match": {"any": [A, B]}}]}]},
    {"must_not": [{"is_empty": {"key": "_doc_id"}}]},
    {"must": [{"is_null": {"key": "_tenant"}}]},
    {"must": [{"nested": {"key": "_source", "filter": {"must": []}}}]},
    {"min_should": {"conditions": [{"key": "_tenant", "match": {"value": A}}], "min_count": 1}},
]


@pytest.mark.parametrize("flt", RESERVED_FILTERS)
def test_filters_on_reserved_keys_are_400(seeded: VectorStore, flt: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_filter(flt)
    assert exc.value.field == "filter"


def test_tenant_b_cannot_reach_tenant_a(seeded: VectorStore) -> None:
    info_a = seeded.get_collection(A, "docs")
    before = seeded.search(A, "docs", _vec(0), top_k=10)
    seeded.create_collection(B, "own", Layout("minilm", "1", DIM))
    seeded.upsert(B, "own", _docs(3, offset=100))

    def denied(call: Any, *args: Any, **kwargs: Any) -> None:
        with pytest.raises(EmbedfleetError) as exc:
            call(*args, **kwargs)
        assert exc.value.status in (400, 403, 404), exc.value

    assert [c.name for c in seeded.list_collections(B)] == ["own"]
    # A's collection by its name, its alias or its physical name reads as missing to B
    for name in ("docs", info_a.alias, info_a.physical):
        denied(seeded.get_collection, B, name)
        denied(seeded.search, B, name, _vec(0))
        denied(seeded.get_points, B, name, ["doc-0"])
        denied(seeded.scroll, B, name)
        denied(seeded.upsert, B, name, _docs(1))
        denied(seeded.delete_points, B, name, ids=["doc-0"])
        denied(seeded.delete_points, B, name, filter={})
        denied(seeded.delete_collection, B, name)
        denied(seeded.ensure_payload_index, B, name, "lang", "keyword")
        denied(seeded.create_physical, B, name, Layout("minilm", "2", DIM))
    # ... and A's physical collection cannot be reached through B's own collection either
    for call, extra in [
        (seeded.search, (_vec(0),)),
        (seeded.upsert, (_docs(1),)),
        (seeded.get_points, (["doc-0"],)),
    ]:
        denied(call, B, "own", *extra, physical=info_a.physical)
    denied(seeded.delete_points, B, "own", ids=["doc-0"], physical=info_a.physical)
    denied(seeded.switch_alias, B, "own", info_a.physical)
    denied(seeded.drop_physical, B, "own", info_a.physical)
    for flt in RESERVED_FILTERS:
        denied(seeded.search, B, "own", _vec(0), filter=flt)
        denied(seeded.delete_points, B, "own", filter=flt)
    # B's own deletes, even match-everything ones, stay in B's collection
    seeded.delete_points(B, "own", filter={})
    assert _count(seeded, B, "own") == 0

    assert seeded.get_collection(A, "docs") == info_a
    after = seeded.search(A, "docs", _vec(0), top_k=10)
    assert [h.id for h in after] == [h.id for h in before]
    assert [h.payload for h in after] == [h.payload for h in before]
    assert [h.score for h in after] == pytest.approx([h.score for h in before], abs=1e-6)


def test_foreign_points_in_a_physical_collection_stay_invisible(seeded: VectorStore) -> None:
    """Defence in depth: were a point of another tenant ever written into A's collection, A's reads,
    deletes and scrolls would still not see or touch it (the `_tenant` condition rides on all of them)."""
    physical = seeded.get_collection(A, "docs").physical
    stray = (point_id(B, "docs", "doc-0"), _vec(0), {TENANT_KEY: B, DOC_ID_KEY: "doc-0"})
    seeded.backend.upsert(physical, [stray])
    hits = seeded.search(A, "docs", _vec(0), top_k=100)
    assert len(hits) == len({h.id for h in hits}) == 10
    assert sum(len(p) for p in seeded.scroll_ids(A, "docs")) == 10
    assert _count(seeded, A, "docs") == 10
    seeded.delete_points(A, "docs", filter={})
    everything = qm.Filter(must=[])
    assert seeded.backend.count(physical, everything) == 1  # only B's stray point is left


# --- migrations --------------------------------------------------------------------------------


def test_switch_alias_moves_reads_and_old_physical_can_be_dropped(seeded: VectorStore) -> None:
    v1 = seeded.get_collection(A, "docs").physical
    v2 = seeded.create_physical(A, "docs", Layout("mpnet", "2", DIM + 4)).name
    assert seeded.get_collection(A, "docs").physical == v1  # building v2 changes nothing for readers
    seeded.upsert(A, "docs", _docs(6, DIM + 4), physical=v2)
    with pytest.raises(Inconsistent):
        seeded.upsert(A, "docs", _docs(1), physical=v2)  # v1's dimension does not fit v2

    assert len(seeded.search(A, "docs", _vec(0), top_k=100)) == 10  # still v1
    info = seeded.switch_alias(A, "docs", v2)
    assert (info.model, info.version, info.dimension) == ("mpnet", "2", DIM + 4)
    if seeded.kind == "server":
        assert _aliases(seeded)[info.alias] == v2
    hits = seeded.search(A, "docs", _vec(0, DIM + 4), top_k=100)
    assert len(hits) == 6 and hits[0].id == "doc-0"
    assert len(seeded.search(A, "docs", _vec(0), top_k=100, physical=v1)) == 10  # v1 kept for rollback

    # deletes reach every physical, so a rollback cannot resurrect a deleted document
    seeded.delete_points(A, "docs", ids=["doc-1"])
    assert _count(seeded, A, "docs") == 5
    assert not seeded.get_points(A, "docs", ["doc-1"], physical=v1)

    with pytest.raises(Conflict):
        seeded.drop_physical(A, "docs", v2)
    info = seeded.drop_physical(A, "docs", v1)
    assert [p.name for p in info.physicals] == [v2] and not _exists(seeded, v1)
    with pytest.raises(NotFound):
        seeded.search(A, "docs", _vec(0), physical=v1)


def test_rollback_and_migration_slot(seeded: VectorStore) -> None:
    seeded.ensure_payload_index(A, "docs", "lang", "keyword")
    v1 = seeded.get_collection(A, "docs").physical
    v2 = seeded.create_physical(A, "docs", Layout("minilm-ft", "2", DIM, quantization="scalar"))
    assert v2.distance == "cosine" and v2.quantization == "scalar"
    info = seeded.set_migration(
        A, "docs", {"state": "backfilling", "to": v2.name, "cursor": None}, "migrating"
    )
    assert (
        seeded.get_collection(A, "docs").migration
        == info.migration
        == {
            "state": "backfilling",
            "to": v2.name,
            "cursor": None,
        }
    )
    seeded.switch_alias(A, "docs", v2.name)
    seeded.switch_alias(A, "docs", v1)  # rollback
    info = seeded.set_migration(A, "docs", None, "ready")
    assert info.physical == v1 and info.migration is None and info.status == "ready"
    assert _count(seeded, A, "docs") == 10


# --- exactness ---------------------------------------------------------------------------------


def test_search_top_k_equals_brute_force_cosine(store: VectorStore) -> None:
    rng = np.random.default_rng(7)
    dim, n, k = 32, 600, 10
    docs = rng.standard_normal((n, dim)).astype(np.float32)
    queries = rng.standard_normal((20, dim)).astype(np.float32)
    store.create_collection(A, "exact", Layout("minilm", "1", dim))
    store.upsert(A, "exact", [PointIn(str(i), v) for i, v in enumerate(docs)])

    unit = docs / np.linalg.norm(docs, axis=1, keepdims=True)
    for q in queries:
        scores = unit @ (q / np.linalg.norm(q))
        expected = np.argsort(-scores)[:k]
        hits = store.search(A, "exact", q, top_k=k, with_payload=False)
        assert [int(h.id) for h in hits] == expected.tolist()
        np.testing.assert_allclose([h.score for h in hits], scores[expected], atol=1e-5)


# --- sparse (BM25) and hybrid search, diversity ----------------------------------------------------

SENTENCES = [
    "The gateway answers ERR_4xx_TOKEN when an API key has expired.",
    "Call parse_filter() to validate a caller's filter before searching.",
    "Tokens are counted by the batcher before a batch is sent.",
    "An expired key yields a 401 error from the gateway.",
    "Foxes are clever animals that live in forests.",
    "The quick brown fox jumps over the lazy dog.",
    "Search results are fused with reciprocal rank fusion.",
    "Each tenant's collections live in their own physical collections.",
]


@pytest.fixture
def texts(store: VectorStore) -> VectorStore:
    """Tenant A's `texts` (bm25) holds SENTENCES with random dense vectors (seeds 100 + i)."""
    store.create_collection(A, "texts", Layout("minilm", "1", DIM, sparse="bm25"))
    store.upsert(
        A,
        "texts",
        [
            PointIn(f"s{i}", _vec(100 + i), {"i": i}, {"text": t}, bm25_document(t))
            for i, t in enumerate(SENTENCES)
        ],
    )
    return store


def test_an_exact_identifier_ranks_its_document_first_with_sparse_and_hybrid(texts: VectorStore) -> None:
    query = _vec(105)  # the dense query is document s5's own vector: dense search knows nothing of tokens
    sq = bm25_query("ERR_4xx_TOKEN")
    assert texts.search(A, "texts", query, top_k=3)[0].id == "s5"
    sparse = texts.search(A, "texts", None, top_k=3, mode="sparse", sparse_query=sq)
    assert sparse[0].id == "s0" and (sparse[0].score or 0.0) > (sparse[1].score or 0.0)
    assert {h.id for h in sparse} <= {"s0", "s2"}  # only documents sharing a token ("token") come back
    views = []
    for weights in (None, (1.0, 1.0), (1.0, 3.0)):
        hybrid = texts.search(A, "texts", query, top_k=3, mode="hybrid", sparse_query=sq, weights=weights)
        assert hybrid[0].id == "s0" and "s5" in {h.id for h in hybrid}, weights
        views.append([(h.id, h.score or 0.0) for h in hybrid])
    assert views[0] == views[1]  # equal weights are plain RRF
    # rrf (k=2): s5 is first of the dense stage only, s0 first of the sparse stage and somewhere in the dense
    assert views[0][0][1] > 0.5 and dict(views[0])["s5"] == pytest.approx(0.5, abs=1e-6)
    dbsf = texts.search(A, "texts", query, top_k=3, mode="hybrid", sparse_query=sq, fusion="dbsf")
    assert dbsf[0].id == "s0", [(h.id, h.score) for h in dbsf]
    # the tenant's and the caller's filters apply to every stage
    only_odd = {"must": [{"key": "i", "match": {"any": [1, 3, 5, 7]}}]}
    filtered = texts.search(A, "texts", query, top_k=8, filter=only_odd, mode="hybrid", sparse_query=sq)
    assert {h.id for h in filtered} == {"s1", "s3", "s5", "s7"}


def test_sparse_vectors_are_stored_returned_and_kept_across_a_restart(tmp_path: Path, kind: str) -> None:
    first = _open(kind, tmp_path)
    first.create_collection(A, "texts", Layout("minilm", "1", DIM, sparse="bm25"))
    doc = bm25_document(SENTENCES[0])
    first.upsert(A, "texts", [PointIn("s0", _vec(0), {}, None, doc), PointIn("plain", _vec(1))])
    first.close()
    second = _open(kind, tmp_path)
    info = second.get_collection(A, "texts")
    assert info.current.sparse == "bm25" and info.public()["sparse"] == "bm25"
    got = {p.id: p for p in second.get_points(A, "texts", ["s0", "plain"], with_vectors=True)}
    assert got["plain"].sparse is None and got["s0"].sparse is not None
    assert got["s0"].sparse[0] == doc[0]
    np.testing.assert_allclose(got["s0"].sparse[1], doc[1], rtol=1e-6)
    page, _ = second.scroll(A, "texts", with_vectors=True)
    assert {p.id: p.sparse is not None for p in page} == {"s0": True, "plain": False}
    hits = second.search(A, "texts", None, mode="sparse", sparse_query=bm25_query("token"))
    assert [h.id for h in hits] == ["s0"]
    second.close()


@pytest.fixture(params=["edge", "server"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_diversity_zero_is_plain_nearest_order_and_more_diversity_reorders(texts: VectorStore) -> None:
    q = _vec(7)
    nearest = texts.search(A, "texts", q, top_k=5)
    same = texts.search(A, "texts", q, top_k=5, diversity=0.0, candidates=8)
    assert [(h.id, round(h.score or 0, 5)) for h in same] == [(h.id, round(h.score or 0, 5)) for h in nearest]
    diverse = texts.search(A, "texts", q, top_k=5, diversity=0.9, candidates=8)
    assert diverse[0].id == nearest[0].id  # MMR starts from the most relevant
    assert [h.id for h in diverse] != [h.id for h in nearest]
    scores = {h.id: h.score for h in texts.search(A, "texts", q, top_k=8)}
    assert all(h.score == pytest.approx(scores[h.id], abs=1e-5) for h in diverse)  # plain similarities
    hybrid = texts.search(
        A, "texts", q, top_k=3, mode="hybrid", sparse_query=bm25_query("fox"), diversity=0.0
    )
    hybrid_scores = [h.score or 0.0 for h in hybrid]
    assert hybrid_scores == sorted(hybrid_scores, reverse=True)


def test_sparse_results_with_equal_scores_are_ordered_by_point_id(texts: VectorStore) -> None:
    texts.upsert(
        A,
        "texts",
        [PointIn(f"twin{i}", _vec(200 + i), {}, None, bm25_document("a lazy fox")) for i in range(6)],
    )
    hits = texts.search(A, "texts", None, top_k=4, mode="sparse", sparse_query=bm25_query("lazy"))
    twins = {point_id(A, "texts", f"twin{i}"): f"twin{i}" for i in range(6)}
    assert [h.id for h in hits] == [twins[p] for p in sorted(twins)][:4]
    assert len({h.score for h in hits}) == 1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"mode": "lexical"}, "mode"),
        ({"mode": "sparse"}, "sparse"),
        ({"mode": "hybrid"}, "sparse"),
        ({"sparse_query": ([1], [1.0])}, "sparse"),
        ({"mode": "sparse", "sparse_query": ([1, 1], [1.0, 1.0])}, "sparse"),
        ({"mode": "sparse", "sparse_query": ([-1], [1.0])}, "sparse"),
        ({"mode": "sparse", "sparse_query": ([1], [float("nan")])}, "sparse"),
        ({"mode": "sparse", "sparse_query": ([1, 2], [1.0])}, "sparse"),
        ({"mode": "sparse", "sparse_query": "fox"}, "sparse"),
        ({"fusion": "rrf"}, "fusion"),
        ({"mode": "hybrid", "sparse_query": ([1], [1.0]), "fusion": "max"}, "fusion"),
        ({"weights": (1.0, 1.0)}, "weights"),
        ({"mode": "hybrid", "sparse_query": ([1], [1.0]), "weights": (1.0, -1.0)}, "weights"),
        ({"mode": "hybrid", "sparse_query": ([1], [1.0]), "weights": (1.0, 2.0, 3.0)}, "weights"),
        ({"mode": "hybrid", "sparse_query": ([1], [1.0]), "weights": "even"}, "weights"),
        (
            {"mode": "hybrid", "sparse_query": ([1], [1.0]), "fusion": "dbsf", "weights": (1.0, 2.0)},
            "weights",
        ),
        ({"diversity": 1.5}, "diversity"),
        ({"diversity": True}, "diversity"),
        ({"mode": "sparse", "sparse_query": ([1], [1.0]), "diversity": 0.5}, "diversity"),
        ({"candidates": 50}, "candidates"),
        ({"diversity": 0.5, "candidates": 2}, "candidates"),
        ({"mode": "hybrid", "sparse_query": ([1], [1.0]), "candidates": 5000}, "candidates"),
    ],
)
def test_search_options_are_validated_naming_their_field(
    texts: VectorStore, kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidInput) as exc:
        texts.search(A, "texts", _vec(0), top_k=3, **kwargs)
    assert exc.value.field == field, exc.value.message


def test_sparse_needs_a_bm25_collection(seeded: VectorStore) -> None:
    modes: list[Mode] = ["sparse", "hybrid"]
    for mode in modes:
        with pytest.raises(InvalidInput, match="sparse='bm25'") as exc:
            seeded.search(A, "docs", _vec(0), mode=mode, sparse_query=bm25_query("fox"))
        assert exc.value.field == "mode"
    with pytest.raises(InvalidInput) as exc:  # nor can a plain collection store sparse vectors
        seeded.upsert(A, "docs", [PointIn("d", _vec(0), {}, None, bm25_document("fox"))])
    assert exc.value.field == "sparse"
    with pytest.raises(InvalidInput) as exc:
        seeded.create_collection(A, "splade", Layout("minilm", "1", DIM, sparse="splade"))
    assert exc.value.field == "sparse"
    assert seeded.search(A, "docs", _vec(4), top_k=1)[0].id == "doc-4"  # dense is untouched


def test_records_written_before_sparse_vectors_read_as_none(store: VectorStore) -> None:
    info = store.create_collection(A, "old", Layout("minilm", "1", DIM))
    payload = info.to_payload()
    for p in payload["physicals"]:
        del p["sparse"]
    old = CollectionInfo.from_payload(payload)
    assert old == info and old.current.layout.sparse == "none"


def test_bm25_encoder_is_shared_and_deterministic() -> None:
    doc, query = bm25_document("Foxes are clever; ERR_4xx_TOKEN!"), bm25_query("fox err_4xx_token")
    assert doc == bm25_document("Foxes are clever; ERR_4xx_TOKEN!")
    assert set(query[0]) <= set(doc[0]) and query[1] == [1.0] * len(query[0])  # stemmed, lower-cased
    assert bm25_query("the and of") == ([], [])
    with pytest.raises(InvalidInput):
        bm25_query(None)  # type: ignore[arg-type]


def test_edge_index_build_keeps_sparse_vectors(tmp_path: Path) -> None:
    store = VectorStore(EdgeBackend(tmp_path / "edge", EdgeTuning(flush_ms=0, index_threshold=10**9)))
    try:
        store.create_collection(A, "texts", Layout("minilm", "1", DIM, sparse="bm25"))
        points = [
            PointIn(f"s{i}", _vec(100 + i), {}, None, bm25_document(t)) for i, t in enumerate(SENTENCES)
        ]
        store.upsert(A, "texts", points)
        sq = bm25_query("clever fox token")

        def view() -> list[tuple[str, float]]:
            hits = store.search(A, "texts", _vec(1), top_k=5, mode="hybrid", sparse_query=sq)
            return [(h.id, round(h.score or 0, 5)) for h in hits]

        before = view()
        backend = store.backend
        assert isinstance(backend, EdgeBackend)
        backend.build_index(store.get_collection(A, "texts").physical)
        assert view() == before
    finally:
        store.close()


def test_a_qdrant_server_gets_one_request_and_an_old_one_a_clear_400() -> None:
    """What ServerBackend sends a remote server (local mode accepts more than a server might), and the
    version an older server is told it needs."""
    client = MagicMock()
    client.info.return_value = SimpleNamespace(version="1.12.4")
    old = ServerBackend(client)
    corpus = qm.Filter(must=[qm.FieldCondition(key=TENANT_KEY, match=qm.MatchValue(value=A))])
    base = Search(vector=_vec(0), filter=corpus, limit=3, idf_corpus=corpus)
    for search, field, version in [
        (replace(base, mode="sparse", sparse=([1], [1.0])), "mode", "1.19"),
        (replace(base, mode="hybrid", sparse=([1], [1.0])), "mode", "1.19"),
        (replace(base, diversity=0.5, candidates=10), "diversity", "1.15"),
    ]:
        with pytest.raises(InvalidInput, match=version) as exc:
            old.query("phys", search)
        assert exc.value.field == field
    client.query_points.assert_not_called()

    client.info.return_value = SimpleNamespace(version="1.19.0")
    new = ServerBackend(client)
    new.query(
        "phys",
        replace(base, mode="hybrid", sparse=([1], [1.0]), weights=(1.0, 3.0), diversity=0.2, candidates=30),
    )
    kwargs = client.query_points.call_args.kwargs
    assert kwargs["query"] == qm.NearestQuery(
        nearest=base.vector.tolist(),  # type: ignore[union-attr]
        mmr=qm.Mmr(diversity=0.2, candidates_limit=30),
    )
    [fused] = kwargs["prefetch"]
    assert fused.query == qm.RrfQuery(rrf=qm.Rrf(k=2, weights=[1.0, 3.0])) and fused.limit == 30
    dense, sparse = fused.prefetch
    assert dense.using is None and dense.limit == 30
    assert sparse.using == "bm25" and sparse.params == qm.SearchParams(idf=qm.IdfCorpusParams(corpus=corpus))
    assert kwargs["query_filter"] == corpus and kwargs["limit"] == 3


def test_server_search_params_carry_ef_exact_and_acorn() -> None:
    """The dense stage's parameters a Qdrant server gets: the settings' ef, exact search for an unindexed
    filter key, ACORN for indexed ones (left out for a server older than 1.16, which would reject it)."""
    client = MagicMock()
    client.info.return_value = SimpleNamespace(version="1.20.0")
    backend = ServerBackend(client, hnsw_ef=384)
    flt = qm.Filter(must=[qm.FieldCondition(key=TENANT_KEY, match=qm.MatchValue(value=A))])
    base = Search(vector=_vec(0), filter=flt, limit=3)
    acorn = qm.AcornSearchParams(enable=True, max_selectivity=1.0)
    for search, params in [
        (base, qm.SearchParams(hnsw_ef=384, exact=False)),
        (replace(base, hnsw_ef=64, exact=True), qm.SearchParams(hnsw_ef=64, exact=True)),
        (replace(base, acorn=True), qm.SearchParams(hnsw_ef=384, exact=False, acorn=acorn)),
    ]:
        backend.query("phys", search)
        assert client.query_points.call_args.kwargs["search_params"] == params
    client.info.return_value = SimpleNamespace(version="1.15.2")
    ServerBackend(client).query("phys", replace(base, acorn=True))
    assert client.query_points.call_args.kwargs["search_params"] == qm.SearchParams(exact=False)


def test_filter_on_an_unindexed_key_searches_exactly_after_an_index_build(tmp_path: Path) -> None:
    """HNSW follows only points that pass the filter: after the build, a 10% filter on a key with no
    payload index found a fraction of its matches. The store searches such filters exactly, asks for
    ACORN once the key is indexed after the graph (no payload-aware links), and not where the key was
    indexed before the build (the links serve it; ACORN would cost 3-4x for nothing)."""
    # a small full-scan threshold: the planner would otherwise search these 4,000 points exactly anyway
    tuning = EdgeTuning(flush_ms=0, index_threshold=10**9, full_scan_threshold_kb=10)
    store = VectorStore(EdgeBackend(tmp_path / "edge", tuning))
    try:
        dim, n = 32, 4000
        rng = np.random.default_rng(3)
        centres = rng.standard_normal((40, dim)).astype(np.float32)
        x = centres[rng.integers(0, 40, n)] + 0.3 * rng.standard_normal((n, dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        backend = store.backend
        assert isinstance(backend, EdgeBackend)
        acorn: list[bool] = []
        for name in ("late", "early"):
            store.create_collection(A, name, Layout("m", "1", dim))
            if name == "early":
                store.ensure_payload_index(A, name, "g", "integer")
            points = [PointIn(f"d{i}", x[i], {"g": i % 10}) for i in range(n)]
            for s in range(0, n, 1000):
                store.upsert(A, name, points[s : s + 1000])
            physical = store.get_collection(A, name).physical
            assert backend.build_index(physical)
            assert backend.unindexed(physical) == 0
            edge = backend._shard(physical).edge
            query = edge.query
            edge.query = lambda *a, query=query, **kw: acorn.append(kw["acorn"]) or query(*a, **kw)  # type: ignore[method-assign]
        queries = centres[:20] / np.linalg.norm(centres[:20], axis=1, keepdims=True)
        flt = {"must": [{"key": "g", "match": {"value": 3}}]}
        match = np.flatnonzero(np.arange(n) % 10 == 3)

        def recall(name: str) -> float:
            got = 0.0
            acorn.clear()
            for q in queries:
                want = {f"d{i}" for i in match[np.argsort(-(x[match] @ q))[:10]]}
                hits = store.search(A, name, q, top_k=10, filter=flt, with_payload=False)
                got += len({h.id for h in hits} & want) / 10
            return got / len(queries)

        assert recall("late") == 1.0 and not any(acorn)  # exact: the key has no payload index
        store.ensure_payload_index(A, "late", "g", "integer")
        assert recall("late") >= 0.9 and all(acorn)  # plain HNSW strands on the few linked matches
        assert recall("early") >= 0.9 and not any(acorn)
        store.close()
        store = VectorStore(EdgeBackend(tmp_path / "edge", tuning))  # what was linked survives a restart
        backend = store.backend
        assert isinstance(backend, EdgeBackend)
        assert backend._shard(store.get_collection(A, "early").physical).linked == {TENANT_KEY, "g"}
        assert backend._shard(store.get_collection(A, "late").physical).linked == {TENANT_KEY}
    finally:
        store.close()
