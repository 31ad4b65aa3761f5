"""Job records in a real redis-server: `running` reads an index of running jobs, never every record
kept, and a Redis written before the index existed gets its running jobs indexed once. The SQLite store
(the embedded default) must answer the same questions the same way."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from services.jobs import RedisJobStore
from services.jobs.records import Job, SqliteJobStore
from tests.integration.conftest import Redis

pytestmark = pytest.mark.integration


@pytest.fixture
def redis_url(redis_server: Redis) -> Iterator[str]:
    """A database of its own (the other tests' workers use database 0, recovery's 7)."""
    url = redis_server.url.rsplit("/", 1)[0] + "/6"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


def job(tenant: str, collection: str, chunks: int = 2) -> Job:
    return Job(
        id=f"{tenant}-{collection}-{chunks}",
        tenant=tenant,
        collection=collection,
        chunks=[f"c{i}" for i in range(chunks)],
        sizes=[1] * chunks,
    )


@pytest.fixture(params=["redis", "sqlite"])
def store(
    request: pytest.FixtureRequest, redis_url: str, tmp_path: Path
) -> Iterator[RedisJobStore | SqliteJobStore]:
    s = RedisJobStore(redis_url) if request.param == "redis" else SqliteJobStore(tmp_path / "jobs.sqlite")
    yield s
    s.close()


def test_running_lists_queued_and_running_jobs_by_tenant_and_collection(
    store: RedisJobStore | SqliteJobStore,
) -> None:
    a, b, c = job("t1", "docs"), job("t1", "other"), job("t2", "docs")
    for j in (a, b, c):
        store.save(j)
    b.state = "running"
    store.save(b)
    ids = lambda jobs: sorted(j.id for j in jobs)  # noqa: E731
    assert ids(store.running(None)) == sorted([a.id, b.id, c.id])
    assert ids(store.running("t1")) == sorted([a.id, b.id])
    assert ids(store.running("t1", "docs")) == [a.id]
    assert ids(store.running("t2", "other")) == []
    for i in range(2):  # every chunk done: the job settles and is running no more
        store.chunk_done(a.id, i)
    assert store.get(a.id).state == "succeeded"
    assert ids(store.running(None)) == sorted([b.id, c.id])


def test_redis_running_reads_only_running_records(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = RedisJobStore(redis_url)
    finished = [job("t1", f"old{i}", 1) for i in range(50)]
    for j in finished:
        j.state = "succeeded"
        store.save(j)
    live = job("t1", "docs")
    store.save(live)
    assert [j.id for j in store.running(None)] == [live.id]  # the first read indexes this Redis, once
    loaded: list[str] = []
    load_many = store._load_many

    def counting(ids: list[str]) -> list[Job]:
        loaded.extend(ids)
        return load_many(ids)

    monkeypatch.setattr(store, "_load_many", counting)
    assert [j.id for j in store.running(None)] == [live.id]
    assert loaded == [live.id]  # not the 50 finished records
    store.close()


def test_redis_indexes_running_jobs_saved_before_the_index_once(redis_url: str) -> None:
    """Records as the release without the index wrote them (record + tenant set), one running and
    one finished; a record whose id is in the index but whose job is gone leaves it."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    old_running, old_done = job("t1", "docs"), job("t2", "docs")
    old_done.state = "failed"
    for j in (old_running, old_done):
        client.set(f"ef:job:{j.id}", json.dumps({**j.__dict__, "done_chunks": [], "errors": []}))
        client.sadd(f"ef:jobs:{j.tenant}", j.id)
    client.sadd(RedisJobStore.RUNNING_KEY, "gone")
    store = RedisJobStore(redis_url)
    assert [j.id for j in store.running("t1")] == [old_running.id]
    assert client.smembers(RedisJobStore.RUNNING_KEY) == {old_running.id}
    # indexed once: a record written the old way afterwards is not found by scanning again
    late = job("t3", "docs")
    client.set(f"ef:job:{late.id}", json.dumps({**late.__dict__, "done_chunks": [], "errors": []}))
    client.sadd("ef:jobs:t3", late.id)
    assert [j.id for j in RedisJobStore(redis_url).running(None)] == [old_running.id]
    store.close()
    client.close()
