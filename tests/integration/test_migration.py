"""A live model upgrade on the real fleet: writes, deletes and searches keep going while the collection
is re-embedded into a new physical collection; the alias then moves, and rollback moves it back.

The upgrade here is all-minilm-l6-v2 -> minilm-e5 (same engine, e5-style templates: an index-incompatible
model version, as templates.md says). The cross-architecture MiniLM -> MPNet upgrade is evaluated in
bench/migration_eval.py.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.corpus import stdlib_docs
from tests.integration.conftest import Gateway

pytestmark = pytest.mark.integration


def call(gw: Gateway, method: str, path: str, **kw: object) -> httpx.Response:
    return httpx.request(method, f"{gw.base_url}{path}", timeout=120, **kw)  # type: ignore[arg-type]


def all_ids(gw: Gateway, name: str) -> set[str]:
    ids: set[str] = set()
    offset = None
    while True:
        page = call(
            gw, "POST", f"/v1/collections/{name}/scroll", json={"offset": offset, "limit": 1000}
        ).json()
        ids |= {p["id"] for p in page["points"]}
        offset = page["next_offset"]
        if offset is None:
            return ids


@pytest.mark.timeout(600)
def test_live_migration_with_writers_readers_and_rollback(gateway: Gateway) -> None:
    docs = stdlib_docs()[2000:2300]
    assert (
        call(
            gateway,
            "POST",
            "/v1/collections",
            json={"name": "mig", "model": "all-minilm-l6-v2", "query_log": True},
        ).status_code
        == 201
    )
    for i in range(0, len(docs), 100):
        body = {"documents": [{"id": d.id, "text": d.body} for d in docs[i : i + 100]]}
        assert call(gateway, "PUT", "/v1/collections/mig/documents", json=body).status_code == 200
    live = {d.id for d in docs}
    extra = stdlib_docs()[2300:2400]
    # traffic before the upgrade: the opted-in collection keeps these texts to fit the compensator on
    logged = [f"{d.title} (asked)" for d in stdlib_docs()[2500:2580]]
    for q in logged:
        res = call(gateway, "POST", "/v1/collections/mig/search", json={"query": {"text": q}})
        assert res.status_code == 200

    r = call(gateway, "POST", "/v1/collections/mig/migrations", json={"to_model": "minilm-e5"})
    assert r.status_code == 202, r.text
    assert (
        call(gateway, "POST", "/v1/collections/mig/migrations", json={"to_model": "minilm-e5"}).status_code
        == 409
    )

    statuses: list[int] = []
    paths: set[str] = set()
    stop = threading.Event()

    def reader() -> None:
        i = 0
        while not stop.is_set():
            q = docs[i % len(docs)].title
            merge = "?merge=true" if i % 3 == 0 else ""
            res = call(gateway, "POST", f"/v1/collections/mig/search{merge}", json={"query": {"text": q}})
            statuses.append(res.status_code)
            if res.status_code == 200:
                paths.add(res.json()["path"])
            i += 1

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 400
        n = 0
        while time.monotonic() < deadline:
            mig = call(gateway, "GET", "/v1/collections/mig/migrations").json()
            if mig["state"] not in ("sampling", "backfilling", "cutover"):
                break
            if n < len(extra):  # writer: one add and one delete per poll while migrating
                d = extra[n]
                assert (
                    call(
                        gateway,
                        "PUT",
                        "/v1/collections/mig/documents",
                        json={"documents": [{"id": d.id, "text": d.body}]},
                    ).status_code
                    == 200
                )
                live.add(d.id)
                victim = docs[n * 2].id
                assert (
                    call(
                        gateway, "DELETE", "/v1/collections/mig/documents", json={"ids": [victim]}
                    ).status_code
                    == 200
                )
                live.discard(victim)
                n += 1
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert mig["state"] == "done", mig
    assert n > 0, "the writer never ran during the migration"
    assert statuses and set(statuses) == {200}
    assert paths & {"compensated", "v1_fallback", "merged"}, paths
    report = mig["compensator"]["report"]
    assert report["candidates"] and all("gain" in c for c in report["candidates"])
    assert mig["compensator"]["pairs"]["logged_queries"] >= 50, mig["compensator"]["pairs"]
    shown = call(gateway, "GET", "/v1/collections/mig").text + call(gateway, "GET", "/v1/collections").text
    shown += call(gateway, "GET", "/v1/collections/mig/migrations").text
    assert not any(q in shown for q in logged)  # counted, never returned
    assert mig["progress"]["ratio"] >= 1.0 or mig["progress"]["done"] >= mig["progress"]["total"]

    info = call(gateway, "GET", "/v1/collections/mig").json()
    assert info["model"] == "minilm-e5" and info["status"] == "ready"
    assert all_ids(gateway, "mig") == live  # no loss, no duplicates, no resurrected deletes
    res = call(gateway, "POST", "/v1/collections/mig/search", json={"query": {"text": docs[1].title}}).json()
    assert res["path"] == "raw" and res["template"]["template"] == "query: {text}"

    back = call(gateway, "POST", "/v1/collections/mig/migrations/rollback")
    assert back.status_code == 200 and back.json()["state"] == "rolled_back"
    assert call(gateway, "GET", "/v1/collections/mig").json()["model"] == "all-minilm-l6-v2"
    assert (
        call(gateway, "POST", "/v1/collections/mig/search", json={"query": {"text": "x"}}).status_code == 200
    )
    off = call(gateway, "PATCH", "/v1/collections/mig", json={"query_log": False})
    assert off.status_code == 200 and off.json()["query_log"] is False
    bad = call(gateway, "PATCH", "/v1/collections/mig", json={"query_log": "sometimes"})
    assert bad.status_code in (400, 422) and "query_log" in bad.text


WORKER_MODELS = {"EMBEDFLEET_MODELS": "all-minilm-l6-v2,minilm-e5", "EMBEDFLEET_LOG_LEVEL": "info"}


def celery_migration(settings, triton, redis_server, name: str, docs: list):  # type: ignore[no-untyped-def]
    """Settings of a worker-owned data dir with `docs` indexed in collection t/`name` under
    all-minilm-l6-v2 and a migration to minilm-e5 started (the fit is tested above); no step is sent yet.
    Each test has its own collection name: the broker is shared."""
    import asyncio

    from services.indexing import Document, index_documents
    from services.runtime import Runtime
    from services.store import Layout

    own = settings.model_copy(
        update={
            "data_dir": settings.data_dir / f"celery-{name}",
            "broker_url": redis_server.url,
            "triton_url": triton.ports.grpc_url,
        }
    )

    async def setup() -> None:
        rt = Runtime.build(own)
        try:
            rt.store.create_collection("t", name, Layout("all-minilm-l6-v2", "1", 384))
            for i in range(0, len(docs), 100):
                part = [Document(id=d.id, text=d.body) for d in docs[i : i + 100]]
                await index_documents(rt.embedder, rt.store, rt.blobs, "t", name, part)
            await rt.migrations.start("t", name, "minilm-e5", "mean")
        finally:
            await rt.close()

    asyncio.run(setup())
    return own


def wait_for_log(log, text: str, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while text not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert text in log.read_text(), log.read_text()[-3000:]


def assert_migrated(own, name: str, docs: list) -> None:  # type: ignore[no-untyped-def]
    """Read after the worker (the embedded store's owner) has stopped: the new model serves exactly the
    live documents, each embedded once."""
    from services.store import open_store

    store = open_store(own)
    try:
        info = store.get_collection("t", name)
        assert info.model == "minilm-e5" and info.migration["state"] == "done"
        assert info.migration["backfill"]["done"] == info.migration["backfill"]["total"] == len(docs)
        ids = [i for page in store.scroll_ids("t", name) for i in page]
        assert sorted(ids) == sorted(d.id for d in docs)
    finally:
        store.close()


@pytest.mark.timeout(600)
def test_celery_backfill_survives_sigkill_and_ends_with_exactly_the_live_docs(
    settings,
    triton,
    redis_server,
    workdir,  # type: ignore[no-untyped-def]
) -> None:
    """The migration steps run as Celery tasks; the worker (main process and pool child) is SIGKILLed
    mid-backfill and restarted. Local-mode Qdrant is owned by one process, so the worker owns it while
    it runs and this test reads it only before and after (concurrent writers/readers need a Qdrant server
    and are covered in-process above)."""
    import os
    import signal

    from services.jobs.dispatch import CeleryQueue
    from tests.integration.test_collections import start_worker

    docs = stdlib_docs()[2400:2620]
    own = celery_migration(settings, triton, redis_server, "mig", docs)
    CeleryQueue(own).send_step("t", "mig")
    log = own.data_dir / "worker.log"
    worker = start_worker(settings, redis_server, triton.ports.grpc_url, own.data_dir, log, WORKER_MODELS)
    try:
        wait_for_log(log, "backfill 128/", 240)
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)
        worker = start_worker(settings, redis_server, triton.ports.grpc_url, own.data_dir, log, WORKER_MODELS)
        wait_for_log(log, "cutover complete", 300)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(30)
    assert_migrated(own, "mig", docs)


@pytest.mark.timeout(600)
def test_a_worker_starting_resends_a_migration_step_the_broker_lost(settings, triton, redis_server) -> None:  # type: ignore[no-untyped-def]
    """kombu's Redis transport loses a message popped by a consumer killed before it recorded it as
    unacked (services/worker/recovery.py). The same state, made on purpose: a migration started, its step
    in no queue and no unacked hash. A worker starting sends one, and the migration completes."""
    import os
    import signal

    from tests.integration.test_collections import start_worker

    docs = stdlib_docs()[2700:2790]
    own = celery_migration(settings, triton, redis_server, "lost", docs)
    log = own.data_dir / "worker.log"
    worker = start_worker(settings, redis_server, triton.ports.grpc_url, own.data_dir, log, WORKER_MODELS)
    try:
        wait_for_log(log, "embedfleet.migration_step['t', 'lost'] had no message in the broker", 120)
        wait_for_log(log, "cutover complete", 300)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(30)
    assert log.read_text().count("had no message") == 1  # once: the chain then holds a step at all times
    assert_migrated(own, "lost", docs)
