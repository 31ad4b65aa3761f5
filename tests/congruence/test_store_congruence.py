"""The same sequence of store operations on Qdrant Edge (embedded) and on qdrant-client (the server API; its
local mode stands in for a server here), results compared step by step (after qdrant-client's own
tests/congruence_tests). Either backend can then replace the other without a caller noticing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.errors import EmbedfleetError
from services.store import EdgeBackend, Layout, PointIn, ServerBackend, StoredPoint, VectorStore
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
