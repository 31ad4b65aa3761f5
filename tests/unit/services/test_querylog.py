"""Query log: opt-in, bounded by slots, tenant-scoped, retention-limited, never part of a public view."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.config import Settings
from services.querylog import QueryLog
from services.store import EdgeBackend, Layout, ServerBackend, VectorStore

A, B = "tenant-a", "tenant-b"
pytestmark = pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning")


@pytest.fixture(params=["edge", "server"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorStore]:
    if request.param == "edge":
        s = VectorStore(EdgeBackend(tmp_path / "edge"))
    else:
        s = VectorStore(ServerBackend.local(str(tmp_path / "qdrant")))
    yield s
    s.close()


def _rt(store: VectorStore, **overrides: Any) -> QueryLog:
    return QueryLog(Settings(**overrides), store)


def _log_all(rt: QueryLog, tenant: str, name: str, texts: list[str], in_order: bool = False) -> None:
    """Log `texts` as concurrent searches would (writes may land in any order), or one after another."""

    async def go() -> None:
        info = rt.store.get_collection(tenant, name)
        for t in texts:
            rt.remember(info, t)
            if in_order:
                await rt.drain()
        await rt.drain()

    asyncio.run(go())


def _recall(rt: QueryLog, tenant: str, name: str, limit: int = 10_000) -> list[str]:
    return asyncio.run(rt.recall(tenant, name, limit))


def test_nothing_is_kept_unless_the_collection_opted_in(store: VectorStore) -> None:
    store.create_collection(A, "docs", Layout("m", "1", 4))
    rt = _rt(store)
    _log_all(rt, A, "docs", ["how do I sort a list"])
    assert _recall(rt, A, "docs") == []
    store.set_query_log(A, "docs", True)
    _log_all(rt, A, "docs", ["how do I sort a list"])
    assert _recall(rt, A, "docs") == ["how do I sort a list"]


def test_bounded_by_the_slot_space_recent_first_and_cut_to_max_chars(store: VectorStore) -> None:
    random.seed(0)
    store.create_collection(A, "docs", Layout("m", "1", 4), query_log=True)
    rt = _rt(store, query_log_size=16, query_log_max_chars=17)
    # in order: concurrent writes land in thread order, so "newest" would be ill-defined (CI flaked on it)
    _log_all(rt, A, "docs", [f"query number {i:04d} with a long tail" for i in range(300)], in_order=True)
    kept = _recall(rt, A, "docs")
    assert 8 <= len(kept) <= 16
    assert all(len(t) == 17 for t in kept)
    assert "query number 0299" in kept  # the newest text was written last into its slot
    # an early text survives only if no later one hit its slot: (15/16)^200 ≈ 3e-6
    assert not any(int(t[-4:]) < 100 for t in kept)


def test_tenants_and_collections_never_see_each_other(store: VectorStore) -> None:
    for tenant in (A, B):
        store.create_collection(tenant, "docs", Layout("m", "1", 4), query_log=True)
    store.create_collection(A, "other", Layout("m", "1", 4), query_log=True)
    rt = _rt(store)
    _log_all(rt, A, "docs", ["alpha question"])
    _log_all(rt, B, "docs", ["beta question"])
    assert _recall(rt, A, "docs") == ["alpha question"]
    assert _recall(rt, B, "docs") == ["beta question"]
    assert _recall(rt, A, "other") == []


def test_retention_drops_old_texts(store: VectorStore) -> None:
    store.create_collection(A, "docs", Layout("m", "1", 4), query_log=True)
    store.log_query(A, "docs", 0, "ancient question", time.time() - 3600)
    store.log_query(A, "docs", 1, "fresh question", time.time())
    rt = _rt(store, query_log_ttl_s=60)
    assert _recall(rt, A, "docs") == ["fresh question"]
    # the stale one was deleted, not just hidden: a longer retention does not bring it back
    assert _recall(_rt(store, query_log_ttl_s=7200), A, "docs") == ["fresh question"]


def test_opt_out_and_delete_forget_everything(store: VectorStore) -> None:
    store.create_collection(A, "docs", Layout("m", "1", 4), query_log=True)
    rt = _rt(store)
    _log_all(rt, A, "docs", ["first question", "second question"])
    assert len(_recall(rt, A, "docs")) == 2
    store.set_query_log(A, "docs", False)
    assert _recall(rt, A, "docs") == []
    store.set_query_log(A, "docs", True)
    _log_all(rt, A, "docs", ["third question"])
    store.delete_collection(A, "docs")
    store.create_collection(A, "docs", Layout("m", "1", 4), query_log=True)
    assert _recall(rt, A, "docs") == []


def test_rate_and_size_zero_keep_nothing(store: VectorStore) -> None:
    store.create_collection(A, "docs", Layout("m", "1", 4), query_log=True)
    _log_all(_rt(store, query_log_rate=0.0), A, "docs", ["q1", "q2"])
    _log_all(_rt(store, query_log_size=0), A, "docs", ["q3"])
    assert _recall(_rt(store), A, "docs") == []


def test_public_views_carry_the_flag_not_the_texts(store: VectorStore) -> None:
    store.create_collection(A, "docs", Layout("m", "1", 4), query_log=True)
    _log_all(_rt(store), A, "docs", ["a secret query text"])
    views = [store.get_collection(A, "docs").public(), *(i.public() for i in store.list_collections(A))]
    assert all(v["query_log"] is True for v in views)
    assert "secret" not in repr(views)
    assert "secret" not in repr(store.get_collection(A, "docs").to_payload())
