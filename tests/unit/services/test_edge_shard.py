"""services.store.edge_shard on a real Qdrant Edge shard (qdrant-edge-py 0.9.0): known answers from numpy
and plain Python, every filter kind against a Python evaluation, paging, reopen, fusion formulas,
quantized recall."""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qdrant_client import models as qm

from services.errors import InvalidInput, NotFound
from services.store.edge_shard import (
    Bm25Encoder,
    EdgeEngineError,
    EdgePoint,
    EdgeShard,
    EdgeSpec,
    ShardLocked,
    edge_filter,
    edge_id,
)

DIM = 16


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def uid(i: int) -> str:
    return str(uuid.UUID(int=i + 1))


@pytest.fixture
def shard(tmp_path: Path) -> Iterator[EdgeShard]:
    s = EdgeShard.open(tmp_path / "shard", EdgeSpec(dimension=DIM))
    yield s
    s.close()


def field(key: str, **kw: Any) -> qm.FieldCondition:
    return qm.FieldCondition(key=key, **kw)


def test_ids_are_canonical_and_come_back_as_str(shard: EdgeShard) -> None:
    assert edge_id(7) == 7 and edge_id("42") == 42
    u = uuid.uuid4()
    assert edge_id(str(u).upper()) == str(u) == edge_id(u)
    for bad in (-1, "not-a-uuid", "4.2", True, ""):
        with pytest.raises(InvalidInput):
            edge_id(bad)  # type: ignore[arg-type]
    v = np.ones(DIM, dtype=np.float32)
    assert shard.upsert([(str(u).upper(), v, {"a": 1}), EdgePoint("42", v), (5, v, None)]) == 3
    got = shard.retrieve(["42", str(u), 5, 999, 5], with_payload=True)
    assert [r.id for r in got] == ["42", str(u), "5"]  # input order, missing left out, no duplicates
    assert got[1].payload == {"a": 1} and got[0].payload == {}


def test_upsert_validates_vectors(shard: EdgeShard) -> None:
    with pytest.raises(InvalidInput):
        shard.upsert([(1, np.ones(DIM - 1))])
    with pytest.raises(InvalidInput):
        shard.upsert([(1, np.full(DIM, np.nan))])
    with pytest.raises(InvalidInput):  # this shard has no sparse vector
        shard.upsert([(1, np.ones(DIM), {}, ([1], [1.0]))])
    assert shard.count() == 0


def test_open_reopen_lock_and_close(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with pytest.raises(NotFound):
        EdgeShard.open(path)
    rng = np.random.default_rng(0)
    x = unit(rng, 50)
    with EdgeShard.open(path, EdgeSpec(dimension=DIM, distance="dot")) as s:
        s.upsert([(uid(i), x[i], {"i": i}) for i in range(50)])
        with pytest.raises(ShardLocked):
            EdgeShard.open(path)
    s2 = EdgeShard.open(path)  # no spec: dimension read back from the shard
    assert s2.dimension == DIM and not s2.has_sparse and s2.count() == 50
    rec = s2.retrieve([uid(3)], with_vectors=True)[0]
    assert rec.payload == {"i": 3} and np.allclose(rec.vector or [], x[3])
    s2.close()
    s2.close()
    with pytest.raises(EdgeEngineError):
        s2.count()
    with pytest.raises(InvalidInput):  # incompatible dimension
        EdgeShard.open(path, EdgeSpec(dimension=DIM + 1, distance="dot"))
    with pytest.raises(InvalidInput):  # WAL setting is fixed at creation
        EdgeShard.open(path, EdgeSpec(dimension=DIM, distance="dot", wal=False))


def test_exact_query_equals_numpy(shard: EdgeShard) -> None:
    rng = np.random.default_rng(1)
    x, q = unit(rng, 400), unit(rng, 5)
    shard.upsert([(i, x[i], {"g": i % 3}) for i in range(400)])
    for v in q:
        scores = x @ v
        want = np.argsort(-scores)[:10]
        got = shard.query(v, limit=10, exact=True)
        assert [int(r.id) for r in got] == want.tolist()
        assert np.allclose([r.score for r in got], scores[want], atol=1e-5)
        g1 = np.flatnonzero(np.arange(400) % 3 == 1)
        want_f = g1[np.argsort(-scores[g1])[:5]]
        got_f = shard.query(
            v, qm.Filter(must=[field("g", match=qm.MatchValue(value=1))]), limit=5, exact=True
        )
        assert [int(r.id) for r in got_f] == want_f.tolist()
        thr = float(scores[want[3]]) - 1e-6
        assert [int(r.id) for r in shard.query(v, limit=10, score_threshold=thr)] == want[:4].tolist()
        assert [int(r.id) for r in shard.query(v, limit=3, offset=2)] == want[2:5].tolist()
    top = shard.query(q[0], limit=1, with_payload=False, with_vectors=True)[0]
    assert top.payload is None and np.allclose(top.vector or [], x[int(top.id)], atol=1e-6)


def _points_for_filters() -> list[tuple[int, dict[str, Any]]]:
    cities = [(13.40, 52.52), (2.35, 48.86), (-0.13, 51.51), (12.50, 41.90)]
    out = []
    for i in range(40):
        p: dict[str, Any] = {
            "kind": ["doc", "img", "vid"][i % 3],
            "n": i,
            "price": i * 1.5,
            "ts": f"2024-{1 + i % 12:02d}-15T10:00:00Z",
            "tags": ["a", "b", "c"][: i % 4],
            "text": f"the quick brown fox number {i}" if i % 2 else f"lazy dog {i}",
            "geo": {"lon": cities[i % 4][0], "lat": cities[i % 4][1]},
            "items": [{"sku": f"s{i % 5}", "qty": i % 7}, {"sku": "x", "qty": 0}],
        }
        if i % 5 == 0:
            p["maybe"] = None
        out.append((i, p))
    return out


def _near(p: dict[str, Any], lon: float, lat: float, meters: float) -> bool:
    (a, b), (c, d) = map(math.radians, (p["geo"]["lat"], p["geo"]["lon"])), map(math.radians, (lat, lon))
    h = math.sin((c - a) / 2) ** 2 + math.cos(a) * math.cos(c) * math.sin((d - b) / 2) ** 2
    return 2 * 6371000 * math.asin(math.sqrt(h)) <= meters


CASES: list[tuple[str, qm.Filter, Callable[[int, dict[str, Any]], bool]]] = [
    (
        "value",
        qm.Filter(must=[field("kind", match=qm.MatchValue(value="img"))]),
        lambda i, p: p["kind"] == "img",
    ),
    ("int value", qm.Filter(must=field("n", match=qm.MatchValue(value=7))), lambda i, p: i == 7),
    ("any", qm.Filter(must=[field("tags", match=qm.MatchAny(any=["c"]))]), lambda i, p: "c" in p["tags"]),
    (
        "except",
        qm.Filter(must=[field("kind", match=qm.MatchExcept(**{"except": ["doc", "vid"]}))]),
        lambda i, p: p["kind"] == "img",
    ),
    ("text", qm.Filter(must=[field("text", match=qm.MatchText(text="fox"))]), lambda i, p: i % 2 == 1),
    ("range", qm.Filter(must=[field("price", range=qm.Range(gte=9, lt=30))]), lambda i, p: 9 <= i * 1.5 < 30),
    (
        "datetime",
        qm.Filter(must=[field("ts", range=qm.DatetimeRange(gte=datetime(2024, 6, 1, tzinfo=UTC)))]),
        lambda i, p: 1 + i % 12 >= 6,
    ),
    (
        "naive datetime is UTC",
        qm.Filter(must=[field("ts", range=qm.DatetimeRange(lt=datetime(2024, 3, 15, 10, 0, 1)))]),
        lambda i, p: 1 + i % 12 <= 3,
    ),
    (
        "geo radius",
        qm.Filter(
            must=[
                field("geo", geo_radius=qm.GeoRadius(center=qm.GeoPoint(lon=13.0, lat=52.0), radius=100_000))
            ]
        ),
        lambda i, p: _near(p, 13.0, 52.0, 100_000),
    ),
    (
        "geo box",
        qm.Filter(
            must=[
                field(
                    "geo",
                    geo_bounding_box=qm.GeoBoundingBox(
                        top_left=qm.GeoPoint(lon=-1, lat=53), bottom_right=qm.GeoPoint(lon=3, lat=48)
                    ),
                )
            ]
        ),
        lambda i, p: i % 4 in (1, 2),
    ),
    (
        "geo polygon",
        qm.Filter(
            must=[
                field(
                    "geo",
                    geo_polygon=qm.GeoPolygon(
                        exterior=qm.GeoLineString(
                            points=[
                                qm.GeoPoint(lon=lo, lat=la)
                                for lo, la in [(10, 40), (15, 40), (15, 45), (10, 40)]
                            ]
                        )
                    ),
                )
            ]
        ),
        lambda i, p: i % 4 == 3,
    ),
    (
        "values_count",
        qm.Filter(must=[field("tags", values_count=qm.ValuesCount(gte=2))]),
        lambda i, p: i % 4 >= 2,
    ),
    (
        "is_empty",
        qm.Filter(must=[qm.IsEmptyCondition(is_empty=qm.PayloadField(key="tags"))]),
        lambda i, p: i % 4 == 0,
    ),
    (
        "is_null",
        qm.Filter(must=[qm.IsNullCondition(is_null=qm.PayloadField(key="maybe"))]),
        lambda i, p: i % 5 == 0,
    ),
    ("has_id", qm.Filter(must=[qm.HasIdCondition(has_id=[3, 4, 99])]), lambda i, p: i in (3, 4)),
    ("has_vector", qm.Filter(must=[qm.HasVectorCondition(has_vector="")]), lambda i, p: True),
    (
        "nested",
        qm.Filter(
            must=[
                qm.NestedCondition(
                    nested=qm.Nested(
                        key="items",
                        filter=qm.Filter(
                            must=[
                                field("sku", match=qm.MatchValue(value="s2")),
                                field("qty", range=qm.Range(gte=3)),
                            ]
                        ),
                    )
                )
            ]
        ),
        lambda i, p: i % 5 == 2 and i % 7 >= 3,
    ),
    (
        "bool logic",
        qm.Filter(
            should=[field("kind", match=qm.MatchValue(value="doc")), field("n", range=qm.Range(gt=35))],
            must_not=[qm.HasIdCondition(has_id=[0])],
            must=[qm.Filter(must_not=[field("tags", match=qm.MatchValue(value="b"))])],
        ),
        lambda i, p: (p["kind"] == "doc" or i > 35) and i != 0 and "b" not in p["tags"],
    ),
    (
        "min_should",
        qm.Filter(
            min_should=qm.MinShould(
                conditions=[
                    field("kind", match=qm.MatchValue(value="img")),
                    field("n", range=qm.Range(lt=20)),
                    field("text", match=qm.MatchText(text="fox")),
                ],
                min_count=2,
            )
        ),
        lambda i, p: sum([p["kind"] == "img", i < 20, i % 2 == 1]) >= 2,
    ),
]


@pytest.mark.parametrize("indexed", [False, True], ids=["plain", "indexed"])
def test_filters_match_python_evaluation(tmp_path: Path, indexed: bool) -> None:
    rng = np.random.default_rng(2)
    data = _points_for_filters()
    x = unit(rng, len(data))
    with EdgeShard.open(tmp_path / "f", EdgeSpec(dimension=DIM)) as s:
        s.upsert([(i, x[i], p) for i, p in data])
        if indexed:
            for key, kind in [("kind", "keyword"), ("n", "integer"), ("price", "float"), ("ts", "datetime")]:
                s.create_payload_index(key, kind)  # type: ignore[arg-type]
            s.create_payload_index("geo", "geo")
            s.create_payload_index("text", "text")
        for name, flt, pred in CASES:
            want = {str(i) for i, p in data if pred(i, p)}
            assert want, name
            got = {r.id for r in s.scroll(limit=100, flt=flt, with_payload=False)[0]}
            assert got == want, name
            assert s.count(flt) == len(want), name
            hits = s.query(x[0], flt, limit=100, with_payload=False, exact=True)
            assert {r.id for r in hits} == want, name


def test_bool_match_is_refused_and_slices_partition(shard: EdgeShard) -> None:
    with pytest.raises(InvalidInput):
        edge_filter(qm.Filter(must=[field("flag", match=qm.MatchValue(value=True))]))
    assert edge_filter(None) is None
    rng = np.random.default_rng(3)
    x = unit(rng, 60)
    shard.upsert([(uid(i), x[i]) for i in range(60)])
    seen: list[str] = []
    for index in range(3):
        flt = qm.Filter(must=[qm.SliceCondition(slice=qm.Slice(total=3, index=index))])
        seen += [r.id for r in shard.scroll(limit=100, flt=flt)[0]]
    assert sorted(seen) == sorted(uid(i) for i in range(60))


def test_delete_and_payload_updates(shard: EdgeShard) -> None:
    rng = np.random.default_rng(4)
    x = unit(rng, 20)
    shard.upsert([(uid(i), x[i], {"i": i, "keep": {"a": 1}}) for i in range(20)])
    shard.delete_ids([uid(0), uid(1), uid(999)])  # unknown ids are ignored
    shard.delete_filter(qm.Filter(must=[field("i", range=qm.Range(gte=15))]))
    assert shard.count() == 13
    shard.set_payload([uid(2)], {"new": True})
    assert shard.retrieve([uid(2)])[0].payload == {"i": 2, "keep": {"a": 1}, "new": True}
    shard.set_payload([uid(2)], {"only": 1}, overwrite=True)
    assert shard.retrieve([uid(2)])[0].payload == {"only": 1}
    assert shard.retrieve([uid(3)], with_payload=["keep"])[0].payload == {"keep": {"a": 1}}
    with pytest.raises(NotFound):
        shard.set_payload([uid(0)], {"x": 1})


def test_scroll_pages_cover_every_id_once_and_survive_reopen(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    x = unit(rng, 90)
    ids: list[str | int] = [uid(i) for i in range(45)] + list(range(1000, 1045))
    path = tmp_path / "scroll"

    def pages(s: EdgeShard) -> list[list[str]]:
        out, offset = [], None
        while True:
            recs, offset = s.scroll(limit=7, offset=offset, with_payload=False)
            out.append([r.id for r in recs])
            if offset is None:
                return out

    with EdgeShard.open(path, EdgeSpec(dimension=DIM)) as s:
        s.upsert([(ids[i], x[i]) for i in range(90)])
        first = pages(s)
    flat = [i for page in first for i in page]
    assert len(flat) == 90 and set(flat) == {str(i) for i in ids}
    assert flat[:45] == [str(i) for i in range(1000, 1045)]  # integers first, ascending, then UUIDs
    with EdgeShard.open(path) as s:
        assert pages(s) == first


def test_payload_indexes_and_count(shard: EdgeShard) -> None:
    rng = np.random.default_rng(6)
    x = unit(rng, 300)
    shard.upsert([(i, x[i], {"_tenant": f"t{i % 7}", "u": uid(i % 3), "f": i / 3}) for i in range(300)])
    shard.create_payload_index("_tenant", "keyword", is_tenant=True)
    shard.create_payload_index("_tenant", "keyword", is_tenant=True)  # idempotent
    shard.create_payload_index("u", "uuid")
    shard.create_payload_index("f", "float")
    with pytest.raises(InvalidInput):
        shard.create_payload_index("f", "float", is_tenant=True)
    info = shard.info()
    assert info.points == 300 and info.indexes == {"_tenant": "keyword", "u": "uuid", "f": "float"}
    flt = qm.Filter(must=[field("_tenant", match=qm.MatchValue(value="t3"))])
    assert shard.count(flt) == sum(1 for i in range(300) if i % 7 == 3)
    assert shard.count(qm.Filter(must=[field("u", match=qm.MatchValue(value=uid(1)))])) == 100


def test_optimize_builds_hnsw_and_quantized_search_recall(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    n, dim = 2000, 384
    x, q = unit(rng, n, dim), unit(rng, 20, dim)
    spec = EdgeSpec(dimension=dim, quantization="scalar", indexing_threshold_kb=1)
    with EdgeShard.open(tmp_path / "q", spec) as s:
        for b in range(0, n, 256):
            s.upsert([(i, x[i]) for i in range(b, min(b + 256, n))])
        assert s.info().indexed_vectors == 0
        assert s.optimize() is True
        assert s.info().indexed_vectors == n
        s.flush()
        truth = np.argsort(-(q @ x.T), axis=1)[:, :10]
        recall, drift = 0.0, 0.0
        for v, want in zip(q, truth, strict=True):
            got = s.query(v, limit=10, rescore=True, oversampling=3.0, with_payload=False)
            recall += len({int(r.id) for r in got} & set(want.tolist())) / 10
            raw = s.query(v, limit=1, rescore=False, with_payload=False)[0]
            drift += abs(raw.score - float(x[int(raw.id)] @ v))
            exact = s.query(v, limit=10, exact=True, with_payload=False)
            assert [int(r.id) for r in exact] == want.tolist()
        assert recall / len(q) >= 0.9
        assert drift / len(q) > 1e-5  # unrescored scores are the quantized ones


def test_bm25_encoder_sparse_and_hybrid_fusion(tmp_path: Path) -> None:
    enc = Bm25Encoder()
    assert enc.document("foxes")[0] == enc.query("fox")[0]  # Snowball stemming
    assert enc.query("the of and") == ([], [])  # English stopwords
    assert enc.query("fox fox")[1] == [1.0]
    docs = [
        "the quick brown fox",
        "a lazy dog sleeps",
        "foxes are clever animals",
        "dogs and cats",
        "fox den",
    ]
    rng = np.random.default_rng(8)
    x = unit(rng, len(docs))
    with EdgeShard.open(tmp_path / "h", EdgeSpec(dimension=DIM, bm25=True)) as s:
        assert s.has_sparse
        s.upsert([EdgePoint(i, x[i], {"d": d, "par": i % 2}, enc.document(d)) for i, d in enumerate(docs)])
        rec = s.retrieve([0], with_vectors=True)[0]
        assert rec.sparse == enc.document(docs[0]) and rec.vector is not None
        sq = enc.query("clever fox")
        sparse_hits = s.query_sparse(sq, limit=10)
        assert sparse_hits[0].id == "2" and {r.id for r in sparse_hits} == {"0", "2", "4"}
        dense_hits = s.query(x[1], limit=20)
        dense_rank = {r.id: k for k, r in enumerate(dense_hits)}
        sparse_rank = {r.id: k for k, r in enumerate(sparse_hits)}
        for weights in (None, (3.0, 1.0)):
            w = weights or (1.0, 1.0)
            fused = s.hybrid(x[1], sq, limit=5, rrf_k=2, weights=weights)
            for r in fused:
                want = sum(
                    1 / ((rank[r.id] + 1) / wt + 2 - 1)
                    for rank, wt in ((dense_rank, w[0]), (sparse_rank, w[1]))
                    if r.id in rank
                )
                assert r.score == pytest.approx(want, rel=1e-5)
        dbsf = s.hybrid(x[1], sq, limit=5, fusion="dbsf")
        assert {r.id for r in dbsf} == {str(i) for i in range(5)}
        assert [r.score for r in dbsf] == sorted((r.score for r in dbsf), reverse=True)
        even = qm.Filter(must=[field("par", match=qm.MatchValue(value=0))])
        assert {r.id for r in s.hybrid(x[1], sq, even, limit=5)} == {"0", "2", "4"}  # filters both stages


def test_mmr_diversity(shard: EdgeShard) -> None:
    rng = np.random.default_rng(9)
    base = unit(rng, 5)
    x = np.concatenate([base + 0.01 * unit(rng, 5) * k for k in range(1, 9)])  # 8 near-copies of 5 clusters
    shard.upsert([(i, x[i]) for i in range(len(x))])
    q = base[0]
    nearest = [r.id for r in shard.query(q, limit=5)]
    assert [r.id for r in shard.mmr(q, limit=5, diversity=0.0, candidates=40)] == nearest
    diverse = shard.mmr(q, limit=5, diversity=0.9, candidates=40)
    assert diverse[0].id == nearest[0]
    assert len({int(r.id) % 5 for r in diverse}) > len({int(i) % 5 for i in nearest})
    with pytest.raises(InvalidInput):
        shard.mmr(q, diversity=1.5)
