"""The same sequence of store operations on Qdrant Edge (embedded) and on qdrant-client (the server API; its
local mode stands in for a server here), results compared step by step (after qdrant-client's own
tests/congruence_tests). Either backend can then replace the other without a caller noticing.

The hybrid scenario does the same for BM25 sparse vectors: sparse, hybrid (RRF, weighted RRF, DBSF) and
MMR searches under filters, after overwrites and deletes (IDF statistics must follow them on both)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.errors import EmbedfleetError
from services.store import (
    EdgeBackend,
    Fusion,
    Layout,
    PointIn,
    ServerBackend,
    StoredPoint,
    VectorStore,
    bm25_document,
    bm25_query,
)
from services.store.edge import EdgeTuning

pytestmark = pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning")
DIM = 16
T = "tenant-c"

FILTERS: list[dict[str, Any] | None] = [
    None,
    {"must": [{"key": "lang", "match": {"value": "en"}}]},
    {"must": [{"key": "n", "range": {"gte": 40, "lt": 120}}]},
    {"should": [{"key": "lang", "match": {"any": ["fr", "de"]}}, {"key": "n", "range": {"lt": 10}}]},
    {"must_not": [{"key": "lang", "match": {"except": ["en"]}}]},
    {"must": [{"key": "tags", "match": {"any": ["red"]}}], "must_not": [{"key": "n", "range": {"gt": 200}}]},
    {"must": [{"is_empty": {"key": "tags"}}]},
    {"must": [{"key": "price", "range": {"gt": 2.5, "lte": 7.5}}, {"key": "lang", "match": {"value": "fr"}}]},
    {
        "min_should": {
            "conditions": [
                {"key": "lang", "match": {"value": "en"}},
                {"key": "tags", "match": {"any": ["blue"]}},
                {"key": "n", "range": {"gte": 150}},
            ],
            "min_count": 2,
        }
    },
    {"must": [{"key": "tags", "values_count": {"gte": 2}}]},
    {"must": [{"key": "meta.kind", "match": {"value": "b"}}]},
]


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _points(rng: np.random.Generator, start: int, n: int) -> list[PointIn]:
    vecs = _unit(rng, n)
    langs = ["en", "fr", "de"]
    colours = ["red", "blue", "green"]
    out = []
    for i in range(n):
        k = start + i
        tags = [colours[j] for j in range(3) if (k >> j) & 1]
        payload = {
            "n": k,
            "lang": langs[k % 3],
            "tags": tags,
            "price": (k % 10) * 1.0,
            "meta": {"kind": "ab"[k % 2]},
        }
        out.append(PointIn(f"doc-{k:04d}", vecs[i], payload, {"text": f"text {k}"}))
    return out


def _view(points: list[StoredPoint]) -> list[tuple[Any, ...]]:
    return [(p.id, p.payload, p.source, None if p.score is None else round(p.score, 4)) for p in points]


def _outcome(call: Callable[[], Any]) -> Any:
    """A result, or the error a caller would see (status, code, field)."""
    try:
        return call()
    except EmbedfleetError as exc:
        return ("error", exc.status, exc.code, exc.field)


def scenario(store: VectorStore) -> Iterator[tuple[str, Any]]:
    """The operations, as (step, observable result) pairs."""
    rng = np.random.default_rng(42)
    yield "create", store.create_collection(T, "c", Layout("m", "1", DIM)).public()["dimension"]
    store.ensure_payload_index(T, "c", "lang", "keyword")
    yield "upsert", store.upsert(T, "c", _points(rng, 0, 300))
    overwrite = _points(rng, 0, 20)  # same ids, new vectors and payloads
    yield (
        "overwrite",
        store.upsert(T, "c", [p._replace(payload={**(p.payload or {}), "v": 2}) for p in overwrite]),
    )
    store.delete_points(T, "c", ids=[f"doc-{k:04d}" for k in range(280, 290)])
    store.delete_points(T, "c", filter={"must": [{"key": "n", "range": {"gte": 290}}]})
    yield "count", store.get_collection(T, "c").points_count
    pages, offset = [], None
    while True:
        page, offset = store.scroll(T, "c", offset, limit=37)
        pages.append(_view(page))
        if offset is None:
            break
    yield "scroll", pages
    yield "get", _view(store.get_points(T, "c", ["doc-0003", "missing", "doc-0150", "doc-0285"]))
    queries = _unit(rng, 5)
    for i, flt in enumerate(FILTERS):
        yield f"filter {i} matches", [p.id for p in _scroll_all(store, flt)]
        for q in queries:
            yield f"filter {i} search", _view(store.search(T, "c", q, top_k=7, filter=flt))
    yield "threshold", _view(store.search(T, "c", queries[0], top_k=50, score_threshold=0.3))
    yield "ids only", _view(store.search(T, "c", queries[1], top_k=3, with_payload=False))
    yield (
        "bad filter",
        _outcome(lambda: store.search(T, "c", queries[0], filter={"must": [{"key": "_tenant"}]})),
    )
    yield (
        "bool filter",
        _outcome(
            lambda: store.search(
                T, "c", queries[0], filter={"must": [{"key": "flag", "match": {"value": True}}]}
            )
        ),
    )
    # a migration's physical collection: written, switched to, searched, the old one dropped
    old = store.get_collection(T, "c").physical
    new = store.create_physical(T, "c", Layout("m2", "2", DIM + 4)).name
    wide = _points(np.random.default_rng(7), 0, 50)
    store.upsert(
        T, "c", [p._replace(vector=np.pad(np.asarray(p.vector), (0, 4))) for p in wide], physical=new
    )
    store.switch_alias(T, "c", new)
    q = np.pad(queries[2], (0, 4))
    yield "after switch", (store.get_collection(T, "c").points_count, _view(store.search(T, "c", q, top_k=5)))
    yield "old kept", _view(store.search(T, "c", queries[2], top_k=5, physical=old))
    store.drop_physical(T, "c", old)
    yield "old dropped", _outcome(lambda: store.search(T, "c", queries[2], physical=old))
    store.delete_collection(T, "c")
    yield "deleted", _outcome(lambda: store.get_collection(T, "c"))
    yield "listed", [i.name for i in store.list_collections(T)]


def _scroll_all(store: VectorStore, flt: dict[str, Any] | None) -> list[StoredPoint]:
    out: list[StoredPoint] = []
    offset = None
    while True:
        page, offset = store.scroll(T, "c", offset, limit=100, filter=flt)
        out += page
        if offset is None:
            return out


def test_edge_and_server_backends_agree_on_every_step(tmp_path: Path) -> None:
    edge = VectorStore(EdgeBackend(tmp_path / "edge", EdgeTuning(flush_ms=0)))
    server = VectorStore(ServerBackend.local(str(tmp_path / "qdrant")))
    try:
        matches = []
        for (step_e, got_e), (step_s, got_s) in zip(scenario(edge), scenario(server), strict=True):
            assert step_e == step_s
            assert got_e == got_s, f"backends disagree at {step_e!r}"
            if step_e.endswith("matches"):
                matches.append(len(got_e))
        # the filters select different, non-empty sets: agreement on them means something
        assert len(matches) == len(FILTERS) and min(matches) > 0 and len(set(matches)) > 5, matches
    finally:
        edge.close()
        server.close()


# --- hybrid search: BM25 sparse vectors beside the dense ones ----------------------------------------

TEXTS = [  # real-ish sentences; rare identifiers and function names among them
    "The gateway answers ERR_4xx_TOKEN when an API key has expired or was revoked by an operator.",
    "Call parse_filter() to validate a caller's filter before the store runs any search.",
    "tenant_filter ANDs the tenant condition into every read, delete and scroll of the store.",
    "An expired token yields a 401 error from the gateway, with the OpenAI error shape.",
    "The batcher packs inputs by token budget, counting the padding of every sequence in a batch.",
    "Token budgets decide how batches are packed before they reach the encoder.",
    "Foxes are clever animals that live in forests, fields and sometimes in cities.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Clever tricks: a fox can hide its food in the snow for the winter months.",
    "Search results from dense and sparse stages are fused with reciprocal rank fusion.",
    "Distribution-based score fusion normalises each stage by its mean and three standard deviations.",
    "Maximal marginal relevance trades relevance for diversity among the selected results.",
    "build_index copies the shard directory and optimizes it in a child process.",
    "The store host owns the data directory and answers backend calls over a Unix socket.",
    "Set EMBEDFLEET_QDRANT_URL to use a Qdrant server instead of the embedded engine.",
    "Qdrant Edge holds the GIL for every call, so long optimizations stall other threads.",
    "A migration backfills a new physical collection, then switches reads at cutover.",
    "Rollback moves reads back to the old physical collection kept after the cutover.",
    "The query log keeps a bounded sample of query texts for fitting model upgrades.",
    "Payload indexes make keyword filters a cheap index probe instead of a full scan.",
    "Scalar quantization stores int8 codes and rescoring restores most of the recall.",
    "Binary quantization on random vectors loses much recall unless oversampling is high.",
    "The tokenizer truncates long inputs when a request asks for truncation of its text.",
    "Images are decoded with bounded memory and fetched through an SSRF-safe client.",
    "Video frames are sampled at a fixed rate before the vision encoder sees them.",
    "Triton's dynamic batcher merges batches coming from several gateway processes.",
    "The TensorRT engine is built only where the tensorrt module can be imported.",
    "ERR_5xx_UPSTREAM means the encoder was unavailable and the request may be retried.",
    "retry_after tells a client how many seconds to wait after a 429 or a 503 answer.",
    "The rate limiter answers 429 with Retry-After when a tenant exceeds its budget.",
    "Jobs report progress, rate and an estimated time of arrival while indexing documents.",
    "Celery workers on Redis run indexing and backfill jobs for every tenant.",
    "A fox and a dog became good friends in a children's story about the forest.",
    "Hybrid search helps queries with rare identifiers that embeddings cannot tell apart.",
    "BM25 weighs a term by its frequency in the document and its rarity in the corpus.",
    "Stemming maps foxes to fox and searching to search before hashing the tokens.",
]

QUERIES = [
    "ERR_4xx_TOKEN",
    "parse_filter",
    "clever fox in the forest",
    "expired token error from the gateway",
    "how are batches packed by token budget",
    "rank fusion of dense and sparse results",
]
FUSIONS: list[tuple[Fusion, tuple[float, float] | None]] = [
    ("rrf", None),
    ("rrf", (1.0, 3.0)),
    ("rrf", (2.0, 0.5)),
    ("dbsf", None),
]
HYBRID_FILTERS: list[dict[str, Any] | None] = [
    None,
    {"must": [{"key": "lang", "match": {"value": "en"}}]},
    {"must_not": [{"key": "n", "range": {"gte": 20}}]},
]


def _texts(rng: np.random.Generator, texts: list[str], start: int = 0) -> list[PointIn]:
    vecs = _unit(rng, len(texts))
    return [
        PointIn(
            f"t-{start + i:03d}",
            vecs[i],
            {"n": start + i, "lang": "en" if (start + i) % 3 else "de"},
            {"text": text},
            bm25_document(text),
        )
        for i, text in enumerate(texts)
    ]


def _sparse_view(points: list[StoredPoint]) -> list[tuple[Any, ...]]:
    return [
        (p.id, None if p.sparse is None else (p.sparse[0], [round(v, 4) for v in p.sparse[1]]))
        for p in points
    ]


def hybrid_scenario(store: VectorStore) -> Iterator[tuple[str, Any]]:
    rng = np.random.default_rng(11)
    info = store.create_collection(T, "h", Layout("m", "1", DIM, sparse="bm25"))
    yield "create", info.public()["sparse"]
    yield "upsert", store.upsert(T, "h", _texts(rng, TEXTS))
    # replaced and deleted points must leave the IDF statistics on both engines
    yield "overwrite", store.upsert(T, "h", _texts(rng, [t + " Updated." for t in TEXTS[30:34]], 30))
    store.delete_points(T, "h", ids=["t-034", "t-035"])
    yield "no sparse", store.upsert(T, "h", [PointIn("t-099", _unit(rng, 1)[0], {"n": 99, "lang": "en"})])
    yield "count", store.get_collection(T, "h").points_count
    yield "get", _sparse_view(store.get_points(T, "h", ["t-000", "t-031", "t-099"], with_vectors=True))
    page, _ = store.scroll(T, "h", limit=5, with_vectors=True)
    yield "scroll", _sparse_view(page)
    # inside a fusion stage, equal BM25 scores are ranked in each engine's own order: the texts are chosen
    # so that no query ties (the test asserts this step is empty)
    yield "sparse ties", _sparse_ties(store)
    dense_queries = _unit(rng, len(QUERIES))
    for i, flt in enumerate(HYBRID_FILTERS):
        for text, q in zip(QUERIES, dense_queries, strict=True):
            sq = bm25_query(text)
            step = f"filter {i} {text!r}"
            yield f"{step} sparse", _view(store.search(T, "h", None, 8, flt, mode="sparse", sparse_query=sq))
            for fusion, weights in FUSIONS:
                hits = store.search(
                    T, "h", q, 6, flt, mode="hybrid", sparse_query=sq, fusion=fusion, weights=weights
                )
                yield f"{step} hybrid {fusion} {weights}", _view(hits)
            yield (
                f"{step} hybrid few candidates",
                _view(store.search(T, "h", q, 4, flt, mode="hybrid", sparse_query=sq, candidates=5)),
            )
            for diversity in (0.0, 0.5, 0.9):
                yield (
                    f"{step} mmr {diversity}",
                    _view(store.search(T, "h", q, 6, flt, diversity=diversity, candidates=15)),
                )
            yield (
                f"{step} hybrid mmr",
                _view(
                    store.search(
                        T, "h", q, 5, flt, mode="hybrid", sparse_query=sq, fusion="dbsf", diversity=0.6
                    )
                ),
            )
    q, sq = dense_queries[0], bm25_query(QUERIES[0])
    yield (
        "sparse threshold",
        _view(store.search(T, "h", None, 20, mode="sparse", sparse_query=sq, score_threshold=2.0)),
    )
    yield (
        "hybrid threshold",
        _view(store.search(T, "h", q, 20, mode="hybrid", sparse_query=sq, score_threshold=0.3)),
    )
    yield (
        "mmr threshold",
        _view(store.search(T, "h", q, 6, diversity=0.5, candidates=20, score_threshold=0.1)),
    )
    yield (
        "stopwords only",
        _view(store.search(T, "h", None, 5, mode="sparse", sparse_query=bm25_query("the of and"))),
    )
    yield "ids only", _view(store.search(T, "h", q, 3, mode="hybrid", sparse_query=sq, with_payload=False))
    refused: list[tuple[str, dict[str, Any]]] = [
        ("no bm25", {"mode": "sparse", "sparse_query": sq, "name": "c"}),
        ("no sparse query", {"mode": "hybrid"}),
        ("bad mode", {"mode": "lexical"}),
        ("bad fusion", {"mode": "hybrid", "sparse_query": sq, "fusion": "max"}),
        ("bad weights", {"mode": "hybrid", "sparse_query": sq, "weights": (1.0, 0.0)}),
        ("dbsf weights", {"mode": "hybrid", "sparse_query": sq, "fusion": "dbsf", "weights": (1.0, 2.0)}),
        ("sparse mmr", {"mode": "sparse", "sparse_query": sq, "diversity": 0.5}),
        ("bad diversity", {"diversity": 1.5}),
        ("bad sparse", {"mode": "sparse", "sparse_query": ([1, 1], [0.5, 0.5])}),
    ]
    for step, kwargs in refused:
        yield step, _outcome(partial(_search, store, q, **kwargs))
    # a migration's target keeps the sparse vectors
    new = store.create_physical(T, "h", Layout("m2", "2", DIM, sparse="bm25")).name
    store.upsert(T, "h", _texts(np.random.default_rng(5), TEXTS[:10]), physical=new)
    yield (
        "target sparse",
        _view(store.search(T, "h", None, 5, mode="sparse", sparse_query=bm25_query("fox"), physical=new)),
    )


def _sparse_ties(store: VectorStore) -> list[tuple[int, str]]:
    ties = []
    for i, flt in enumerate(HYBRID_FILTERS):
        for text in QUERIES:
            hits = store.search(T, "h", None, 100, flt, mode="sparse", sparse_query=bm25_query(text))
            scores = [round(h.score or 0.0, 4) for h in hits]
            if len(set(scores)) != len(scores):
                ties.append((i, text))
    return ties


def _search(store: VectorStore, q: np.ndarray, name: str = "h", **kwargs: Any) -> list[tuple[Any, ...]]:
    return _view(store.search(T, name, q, 5, **kwargs))


def test_edge_and_server_agree_on_sparse_hybrid_and_mmr(tmp_path: Path) -> None:
    edge = VectorStore(EdgeBackend(tmp_path / "edge", EdgeTuning(flush_ms=0)))
    server = VectorStore(ServerBackend.local(str(tmp_path / "qdrant")))
    try:
        for store in (edge, server):
            store.create_collection(T, "c", Layout("m", "1", DIM))  # dense only: sparse modes refused
        steps = 0
        for (step_e, got_e), (step_s, got_s) in zip(
            hybrid_scenario(edge), hybrid_scenario(server), strict=True
        ):
            assert step_e == step_s
            assert got_e == got_s, f"backends disagree at {step_e!r}"
            if step_e == "sparse ties":
                assert got_e == [], "tied BM25 scores make fused ranks engine-dependent: change the texts"
            steps += 1
        assert steps == 8 + len(HYBRID_FILTERS) * len(QUERIES) * (6 + len(FUSIONS)) + 5 + 9 + 1
    finally:
        edge.close()
        server.close()
