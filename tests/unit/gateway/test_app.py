"""The gateway's HTTP layer on a real runtime whose Triton is unreachable (127.0.0.1:1, refused at once):
refusals before any model work, error shapes naming the field, auth, and the admission short-cut."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.routing import Route

from gateway.app import create_app
from gateway.routes import embed, embeddings
from services import metrics
from services.config import Settings
from services.runtime import Runtime

MODEL = "all-minilm-l6-v2"


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    settings = Settings(
        data_dir=tmp_path,
        triton_url="127.0.0.1:1",
        models=[MODEL],
        api_keys={"k1": "alpha"},
        max_request_bytes=4096,
        max_chars_per_input=50,
        max_queue_inputs=8,
        cache_backend="none",
    )
    runtime = Runtime.build(settings)
    app = create_app(settings, runtime)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
            yield c, runtime


AUTH = {"Authorization": "Bearer k1"}


async def test_the_startup_heap_is_frozen_while_serving_and_given_back_at_shutdown(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, triton_url="127.0.0.1:1", models=[MODEL], cache_backend="none")
    app = create_app(settings, Runtime.build(settings))
    assert gc.get_freeze_count() == 0
    async with app.router.lifespan_context(app):
        assert gc.get_freeze_count() > 0  # full collections no longer walk the startup heap
    assert gc.get_freeze_count() == 0  # nothing left where the collector cannot reach it
    off = Settings(data_dir=tmp_path, triton_url="127.0.0.1:1", models=[MODEL], gc_freeze=False)
    app = create_app(off, Runtime.build(off))
    async with app.router.lifespan_context(app):
        assert gc.get_freeze_count() == 0


async def test_health_is_open_and_auth_is_required(client: tuple[httpx.AsyncClient, Runtime]) -> None:
    c, _ = client
    assert (await c.get("/healthz")).status_code == 200
    r = await c.post("/v1/embeddings", json={"model": MODEL, "input": "x"})
    assert r.status_code == 401 and r.json()["error"]["param"] == "authorization"
    r = await c.post("/v1/embeddings", json={"model": MODEL, "input": "x"}, headers={"api-key": "wrong"})
    assert r.status_code == 401


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": MODEL}, "input"),
        ({"model": MODEL, "input": "x", "encoding_format": "hex"}, "encoding_format"),
        ({"model": "nope", "input": "x"}, "model"),
        ({"model": MODEL, "input": "x", "dimensions": 7}, "dimensions"),
        ({"model": MODEL, "input": "x", "extra": 1}, "extra"),
        ({"model": MODEL, "input": ""}, "input"),  # nothing to embed: OpenAI refuses it too
        ({"model": MODEL, "input": ["a", ""]}, "input"),
        ({"model": MODEL, "input": [[1, 2], []]}, "input"),
    ],
)
async def test_bad_requests_name_their_field(
    client: tuple[httpx.AsyncClient, Runtime], body: dict[str, object], param: str
) -> None:
    c, _ = client
    r = await c.post("/v1/embeddings", json=body, headers=AUTH)
    assert 400 <= r.status_code < 500
    assert r.json()["error"]["param"] == param, r.json()


TEXT = {"model": MODEL, "input": "x"}
ITEMS = {"model": MODEL, "inputs": [{"text": "x"}]}
LEAN_CASES = {
    "/v1/embeddings": (
        embeddings,
        [
            ({"model": MODEL}, AUTH, "input"),
            ({**TEXT, "encoding_format": "hex"}, AUTH, "encoding_format"),
            ({**TEXT, "extra": 1}, AUTH, "extra"),
            ({"model": MODEL, "input": [1, "a"]}, AUTH, "input.str"),
            ({**TEXT, "model": "nope"}, AUTH, "model"),
            ({**TEXT, "dimensions": 7}, AUTH, "dimensions"),
            ({**TEXT, "input": ""}, AUTH, "input"),
            ({**TEXT, "input": ["a", "y" * 60]}, AUTH, "input[1]"),
            (TEXT, {}, "authorization"),
            (TEXT, {"api-key": "wrong"}, "authorization"),
        ],
    ),
    "/v1/embed": (
        embed,
        [
            ({"model": MODEL}, AUTH, "inputs"),
            ({"model": MODEL, "inputs": []}, AUTH, "inputs"),
            ({**ITEMS, "encoding_format": "hex"}, AUTH, "encoding_format"),
            ({**ITEMS, "embedding_types": ["int4"]}, AUTH, "embedding_types[0]"),
            ({**ITEMS, "extra": 1}, AUTH, "extra"),
            ({**ITEMS, "model": "nope"}, AUTH, "model"),
            ({**ITEMS, "task": "nope"}, AUTH, "task"),
            ({"model": MODEL, "inputs": [{"text": "x"}, {"text": ""}]}, AUTH, "inputs[1]"),
            ({"model": MODEL, "inputs": [{"image": "AAAA"}, {"text": "y" * 60}]}, AUTH, "inputs[1]"),
            ({"model": MODEL, "inputs": [{"image": "not base64!"}]}, AUTH, "inputs[0].image"),
            (ITEMS, {}, "authorization"),
            (ITEMS, {"api-key": "wrong"}, "authorization"),
        ],
    ),
}


@pytest.mark.parametrize("path", sorted(LEAN_CASES))
async def test_the_lean_routes_answer_first_and_as_fastapi_routes_would(
    client: tuple[httpx.AsyncClient, Runtime], path: str
) -> None:
    """The POST is served by a lean Starlette route ahead of the routers; with it removed, FastAPI's
    documented route answers every case the same (status and body), so the contract holds."""
    c, _ = client
    module, refused = LEAN_CASES[path]
    app = c._transport.app  # type: ignore[attr-defined]
    first_router = next(i for i, r in enumerate(app.router.routes) if not isinstance(r, Route))
    lean = [i for i, r in enumerate(app.router.routes) if r in module.LEAN_ROUTES]
    assert lean and max(lean) < first_router and module.LEAN_ROUTES[0].path == path
    assert path in app.openapi()["paths"]  # still documented
    cases = [(body, headers) for body, headers, _ in refused]
    cases.append((refused[-1][0], AUTH))  # reaches the encoder: Triton at 127.0.0.1:1 refuses

    async def answers() -> list[tuple[int, object]]:
        out = []
        for body, headers in cases:
            r = await c.post(path, json=body, headers=headers)
            out.append((r.status_code, r.json()))
        return out

    def counted() -> float:  # requests labelled with the route template, as dashboards group them
        return sum(
            s.value
            for m in metrics.REQUESTS.collect()
            for s in m.samples
            if s.name.endswith("_total") and s.labels["route"] == path
        )

    before = counted()
    lean_answers = await answers()
    assert counted() - before == len(cases)
    routes = app.router.routes
    app.router.routes = [r for r in routes if r not in module.LEAN_ROUTES]
    try:
        assert await answers() == lean_answers
    finally:
        app.router.routes = routes
    statuses = [status for status, _ in lean_answers]
    assert all(400 <= st < 500 for st in statuses[:-1]) and statuses[-1] == 503, statuses
    params = [body["error"]["param"] for _, body in lean_answers[:-1]]  # type: ignore[index]
    assert params == [param for _, _, param in refused], params


async def test_too_large_and_overloaded_are_refused_before_the_body_is_read(
    client: tuple[httpx.AsyncClient, Runtime],
) -> None:
    c, runtime = client
    r = await c.post(
        "/v1/embeddings", content=b"x" * 5000, headers={**AUTH, "content-type": "application/json"}
    )
    assert r.status_code == 413 and r.json()["error"]["param"] == "body"
    batcher = runtime.embedder.batcher(runtime.embedder.spec(MODEL))
    batcher.admitted["online"] = batcher.max_queue  # every permit held by requests in flight
    # not even valid JSON: a saturated gateway answers 429 without parsing it
    r = await c.post(
        "/v1/embeddings", content=b"{not json", headers={**AUTH, "content-type": "application/json"}
    )
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    batcher.admitted["online"] = batcher.max_queue - 1
    r = await c.post("/v1/embeddings", json={"model": MODEL, "input": ["a", "b"]}, headers=AUTH)
    assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"  # 2 inputs, 1 permit
    assert batcher.admitted["online"] == batcher.max_queue - 1  # the refused request held none
    batcher.admitted["online"] = 0


async def test_an_unreachable_encoder_is_503_with_retry_after(
    client: tuple[httpx.AsyncClient, Runtime],
) -> None:
    c, runtime = client
    r = await c.post("/v1/embeddings", json={"model": MODEL, "input": "x"}, headers=AUTH)
    assert r.status_code == 503 and "Retry-After" in r.headers
    assert runtime.embedder.batcher(runtime.embedder.spec(MODEL)).admitted["online"] == 0  # permit returned
