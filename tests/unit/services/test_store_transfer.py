"""`embedfleet store import-local`: a local-mode store (records, migration state, query log, two physicals)
copied into Qdrant Edge answers exactly as the original did."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from cli.store import import_local
from services.config import Settings
from services.errors import Conflict
from services.store import (
    EdgeBackend,
    Layout,
    PointIn,
    ServerBackend,
    VectorStore,
    bm25_document,
    bm25_query,
)
from services.store.edge import EdgeTuning
from services.store.transfer import copy_store

pytestmark = pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning")
A = "tenant-a"


def _fill(store: VectorStore) -> None:
    rng = np.random.default_rng(3)
    store.create_collection(A, "docs", Layout("m", "1", 8), query_log=True)
    store.ensure_payload_index(A, "docs", "lang", "keyword")
    store.upsert(
        A,
        "docs",
        [
            PointIn(f"d{i}", rng.standard_normal(8), {"lang": "en", "n": i}, {"text": f"t{i}"})
            for i in range(700)
        ],
    )
    v2 = store.create_physical(A, "docs", Layout("m2", "2", 12)).name
    store.upsert(A, "docs", [PointIn(f"d{i}", rng.standard_normal(12)) for i in range(40)], physical=v2)
    store.set_migration(A, "docs", {"state": "backfilling", "target": v2}, "migrating")
    store.log_query(A, "docs", 3, "how do I copy a store", time.time())
    store.create_collection("tenant-b", "other", Layout("m", "1", 4))


def test_local_mode_is_copied_into_edge_and_answers_the_same(tmp_path: Path) -> None:
    old = VectorStore(ServerBackend.local(str(tmp_path / "data" / "qdrant")))
    _fill(old)
    q = np.random.default_rng(9).standard_normal(8)
    before = [(h.id, round(h.score or 0, 5), h.payload) for h in old.search(A, "docs", q, top_k=10)]
    info = old.get_collection(A, "docs")
    old.close()

    assert import_local(tmp_path / "data" / "qdrant", Settings(data_dir=tmp_path / "data")) == 0
    new = VectorStore(EdgeBackend(tmp_path / "data" / "edge", EdgeTuning(flush_ms=0)))
    try:
        assert new.get_collection(A, "docs") == info  # record, migration slot, indexes, count
        assert [
            (h.id, round(h.score or 0, 5), h.payload) for h in new.search(A, "docs", q, top_k=10)
        ] == before
        v2 = info.physicals[1].name
        assert len(new.search(A, "docs", np.ones(12), top_k=100, physical=v2)) == 40
        assert new.logged_queries(A, "docs", 0.0, 10) == ["how do I copy a store"]
        assert [c.name for c in new.list_collections("tenant-b")] == ["other"]
        # a second import would overwrite: refused, nothing touched
        src = ServerBackend.local(str(tmp_path / "data" / "qdrant"))
        with pytest.raises(Conflict):
            copy_store(src, new.backend)
        src.close()
        assert new.get_collection(A, "docs").points_count == 700
    finally:
        new.close()


def test_sparse_vectors_are_copied_and_hybrid_search_answers_the_same(tmp_path: Path) -> None:
    src = VectorStore(ServerBackend.local(str(tmp_path / "qdrant")))
    dst = VectorStore(EdgeBackend(tmp_path / "edge", EdgeTuning(flush_ms=0)))
    try:
        rng = np.random.default_rng(4)
        src.create_collection(A, "texts", Layout("m", "1", 8, sparse="bm25"))
        words = ["fox", "token", "gateway", "filter", "batch", "tenant", "search", "fusion", "store"]
        # distinct lengths: no two texts tie on BM25, so fused ranks do not depend on an engine's tie order
        texts = [" ".join(rng.choice(words, size=2 + i)) + f" item{i}" for i in range(40)]
        src.upsert(
            A,
            "texts",
            [
                PointIn(f"t{i}", rng.standard_normal(8), {}, None, bm25_document(t))
                for i, t in enumerate(texts)
            ]
            + [PointIn("dense-only", rng.standard_normal(8))],
        )
        q, sq = rng.standard_normal(8), bm25_query("fox gateway item7")

        def answers(store: VectorStore) -> list[list[tuple[str, float]]]:
            runs = [
                store.search(A, "texts", None, 10, mode="sparse", sparse_query=sq),
                store.search(A, "texts", q, 10, mode="hybrid", sparse_query=sq),
            ]
            return [[(h.id, round(h.score or 0, 4)) for h in hits] for hits in runs]

        before = answers(src)
        report = copy_store(src.backend, dst.backend)
        assert report.points == {src.get_collection(A, "texts").physical: 41}
        assert dst.get_collection(A, "texts").current.sparse == "bm25"
        assert answers(dst) == before and before[0][0][0] == "t7"
        [plain] = dst.get_points(A, "texts", ["dense-only"], with_vectors=True)
        assert plain.sparse is None and plain.vector is not None
    finally:
        src.close()
        dst.close()
