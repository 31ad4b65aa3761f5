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

from bench.corpus import stdlib_docs
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
            gateway, "POST", "/v1/collections", json={"name": "mig", "model": "all-minilm-l6-v2"}
        ).status_code
        == 201
    )
    for i in range(0, len(docs), 100):
        body = {"documents": [{"id": d.id, "text": d.body} for d in docs[i : i + 100]]}
        assert call(gateway, "PUT", "/v1/collections/mig/documents", json=body).status_code == 200
    live = {d.id for d in docs}
    extra = stdlib_docs()[2300:2400]

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
