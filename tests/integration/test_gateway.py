"""The gateway process in front of the real Triton: OpenAI and LangChain clients, templates, truncation,
`dimensions`, every documented bad input, admission (429), Triton loss (503 + recovery), Redis loss."""

from __future__ import annotations

import asyncio
import base64
import os
import signal

import httpx
import numpy as np
import pytest

from services.config import Settings
from services.registry import load_registry
from services.triton_server import LocalTriton, free_port
from tests.integration.conftest import Gateway, start_gateway, start_redis

pytestmark = pytest.mark.integration
MODEL = "all-minilm-l6-v2"


@pytest.fixture(scope="module")
def st_model():  # type: ignore[no-untyped-def]
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(load_registry().get(MODEL).source_dir()), device="cpu")


def post(gw: Gateway, path: str, body: object, **kw: object) -> httpx.Response:
    return httpx.post(f"{gw.base_url}{path}", json=body, timeout=30, **kw)  # type: ignore[arg-type]


def test_openai_client_round_trip(gateway: Gateway, st_model) -> None:  # type: ignore[no-untyped-def]
    import openai

    client = openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key="unused")
    texts = ["The cat sits on the mat.", "Quarterly revenue grew by 4%.", "¿Dónde está la biblioteca?"]
    res = client.embeddings.create(model=MODEL, input=texts)
    want = st_model.encode(texts, normalize_embeddings=True)
    got = np.array([d.embedding for d in res.data])
    assert [d.index for d in res.data] == [0, 1, 2]
    assert float((got * want).sum(1).min()) >= 0.9999
    counts = st_model.tokenize(texts)["attention_mask"].sum(1)
    assert res.usage.prompt_tokens == res.usage.total_tokens == int(counts.sum())
    # without encoding_format the openai client asks for base64 and decodes it itself
    b64 = client.embeddings.create(model=MODEL, input="hello")
    flt = client.embeddings.create(model=MODEL, input="hello", encoding_format="float")
    raw = httpx.post(
        f"{gateway.base_url}/v1/embeddings",
        json={"model": MODEL, "input": "hello", "encoding_format": "base64"},
    ).json()
    decoded = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, flt.data[0].embedding, atol=1e-7)
    assert np.allclose(b64.data[0].embedding, flt.data[0].embedding, atol=1e-7)
    models = client.models.list()
    assert MODEL in [m.id for m in models.data]


def test_openai_token_id_inputs(gateway: Gateway, st_model) -> None:  # type: ignore[no-untyped-def]
    ids = st_model.tokenize(["hello world"])["input_ids"][0].tolist()
    a = post(gateway, "/v1/embeddings", {"model": MODEL, "input": ids}).json()
    b = post(gateway, "/v1/embeddings", {"model": MODEL, "input": "hello world"}).json()
    assert np.allclose(a["data"][0]["embedding"], b["data"][0]["embedding"], atol=1e-6)
    assert a["usage"]["prompt_tokens"] == len(ids)


def test_langchain_openai_embeddings(gateway: Gateway) -> None:
    from langchain_openai import OpenAIEmbeddings

    # check_embedding_ctx_length=False: LangChain would otherwise tokenize with tiktoken, whose
    # vocabulary is OpenAI's (and which downloads its tables from the network).
    lc = OpenAIEmbeddings(
        model=MODEL, base_url=f"{gateway.base_url}/v1", api_key="unused", check_embedding_ctx_length=False
    )
    docs = lc.embed_documents(["alpha", "beta"])
    query = lc.embed_query("alpha")
    assert len(docs) == 2 and len(docs[0]) == 384
    assert np.allclose(docs[0], query, atol=1e-6)


def test_templates_per_task_are_applied_and_reported(gateway: Gateway, st_model) -> None:  # type: ignore[no-untyped-def]
    q = post(
        gateway,
        "/v1/embed",
        {"model": "minilm-e5", "task": "retrieval.query", "inputs": [{"text": "bake bread"}]},
    )
    d = post(
        gateway,
        "/v1/embed",
        {"model": "minilm-e5", "task": "retrieval.passage", "inputs": [{"text": "bake bread"}]},
    )
    assert q.status_code == d.status_code == 200
    assert q.json()["template"] == {"task": "retrieval.query", "template": "query: {text}"}
    assert d.json()["template"] == {"task": "retrieval.passage", "template": "passage: {text}"}
    want_q, want_d = st_model.encode(["query: bake bread", "passage: bake bread"], normalize_embeddings=True)
    assert float(np.dot(q.json()["data"][0]["embedding"], want_q)) >= 0.9999
    assert float(np.dot(d.json()["data"][0]["embedding"], want_d)) >= 0.9999
    inst = post(
        gateway, "/v1/embed", {"model": "minilm-e5", "instruction": "Represent: ", "inputs": [{"text": "x"}]}
    )
    assert inst.json()["template"] == {"task": "instruction", "template": "Represent: {text}"}
    # the OpenAI endpoint embeds raw text unless a task is asked for (extra_body)
    raw = post(gateway, "/v1/embeddings", {"model": "minilm-e5", "input": "bake bread"}).json()
    assert float(np.dot(raw["data"][0]["embedding"], want_q)) < 0.999


def test_dimensions_truncate_and_renormalize(gateway: Gateway) -> None:
    full = post(gateway, "/v1/embeddings", {"model": "minilm-e5", "input": "matryoshka"}).json()
    cut = post(
        gateway, "/v1/embeddings", {"model": "minilm-e5", "input": "matryoshka", "dimensions": 128}
    ).json()
    v = np.array(full["data"][0]["embedding"][:128])
    got = np.array(cut["data"][0]["embedding"])
    assert got.shape == (128,) and abs(np.linalg.norm(got) - 1) < 1e-5
    assert np.allclose(got, v / np.linalg.norm(v), atol=1e-5)


def test_truncation_is_reported(gateway: Gateway) -> None:
    long = " ".join(f"word{i}" for i in range(500))
    r = post(gateway, "/v1/embed", {"model": MODEL, "inputs": [{"text": long}, {"text": "short"}]}).json()
    assert [d["truncated"] for d in r["data"]] == [True, False] and r["data"][0]["tokens"] == 256
    start = post(
        gateway, "/v1/embed", {"model": MODEL, "truncate": "start", "inputs": [{"text": long}]}
    ).json()
    assert start["data"][0]["embedding"] != r["data"][0]["embedding"]


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/v1/embeddings", {"model": MODEL, "input": []}, 400, "input"),
        ("/v1/embeddings", {"model": "nope", "input": "x"}, 404, "model"),
        ("/v1/embeddings", {"model": MODEL}, 400, "input"),
        ("/v1/embeddings", {"model": MODEL, "input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
        ("/v1/embeddings", {"model": MODEL, "input": "x", "dimensions": 100}, 400, "dimensions"),
        ("/v1/embeddings", {"model": MODEL, "input": "x", "dimensions": 0}, 400, "dimensions"),
        ("/v1/embeddings", {"model": MODEL, "input": [[1, 2], [-3]]}, 400, "input[1]"),
        ("/v1/embeddings", {"model": MODEL, "input": ["x"] * 2049}, 413, "input"),
        ("/v1/embeddings", {"model": MODEL, "input": ["ok", "y" * 100_001]}, 413, "input[1]"),
        (
            "/v1/embed",
            {"model": MODEL, "inputs": [{"text": "w " * 400}], "truncate": "none"},
            413,
            "inputs[0]",
        ),
        ("/v1/embed", {"model": MODEL, "inputs": []}, 400, "inputs"),
        ("/v1/embed", {"model": MODEL, "inputs": [{}]}, 400, "inputs[0]"),
        ("/v1/embed", {"model": MODEL, "inputs": [{"text": "a"}], "task": "summarize"}, 400, "task"),
        ("/v1/embed", {"model": MODEL, "inputs": [{"text": "a"}], "truncate": "middle"}, 400, "truncate"),
        ("/v1/embed", {"model": MODEL, "inputs": [{"image": "aGk="}]}, 400, "inputs[0].image"),
        ("/v1/embed", {"model": MODEL, "inputs": [{"text": "a"}], "colour": 1}, 400, "colour"),
    ],
)
def test_bad_inputs_have_documented_status_and_field(
    gateway: Gateway, path: str, body: dict, status: int, param: str
) -> None:
    r = post(gateway, path, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"] and err["type"] and err["code"]


def test_malformed_and_oversized_bodies(gateway: Gateway) -> None:
    r = httpx.post(
        f"{gateway.base_url}/v1/embeddings",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_input"
    big = b'{"model": "x", "input": "' + b"a" * (5 * 1024 * 1024) + b'"}'
    r = httpx.post(
        f"{gateway.base_url}/v1/embeddings", content=big, headers={"content-type": "application/json"}
    )
    assert r.status_code == 413 and r.json()["error"]["param"] == "body"

    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(6):
            yield b"a" * (1024 * 1024)

    r = httpx.post(
        f"{gateway.base_url}/v1/embeddings", content=chunks(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413


def test_health_ready_metrics_open(gateway: Gateway) -> None:
    assert httpx.get(f"{gateway.base_url}/healthz").status_code == 200
    ready = httpx.get(f"{gateway.base_url}/readyz")
    assert ready.status_code == 200 and ready.json()["models"][MODEL] is True
    assert all(ready.json()["models"].values())
    text = httpx.get(f"{gateway.base_url}/metrics").text
    for name in (
        "embedfleet_requests_total",
        "embedfleet_batch_size_bucket",
        "embedfleet_batch_tokens_bucket",
        "embedfleet_triton_request_duration_seconds_bucket",
        "embedfleet_queue_wait_seconds_bucket",
        "embedfleet_tokens_total",
        "embedfleet_rejected_requests_total",
    ):
        assert name in text, name


def test_auth_tenants_and_rate_limit(settings: Settings, triton: LocalTriton) -> None:
    keys = {"key-a": {"tenant": "a", "rate": 1, "burst": 3}, "key-b": "b"}
    gw = start_gateway(settings, triton.ports.grpc_url, "auth", api_keys=keys)
    try:
        body = {"model": MODEL, "input": "x"}
        assert post(gw, "/v1/embeddings", body).status_code == 401
        assert post(gw, "/v1/embeddings", body, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert post(gw, "/v1/embeddings", body, headers={"Authorization": "Bearer key-b"}).status_code == 200
        assert post(gw, "/v1/embeddings", body, headers={"api-key": "key-b"}).status_code == 200
        codes = [
            post(gw, "/v1/embeddings", body, headers={"Authorization": "Bearer key-a"}) for _ in range(6)
        ]
        limited = [r for r in codes if r.status_code == 429]
        assert limited and int(limited[0].headers["Retry-After"]) >= 1
        assert limited[0].json()["error"]["type"] == "rate_limit_error"
        for path in ("/healthz", "/readyz", "/metrics"):
            assert httpx.get(f"{gw.base_url}{path}").status_code == 200
    finally:
        gw.stop()


async def test_queue_full_gives_429_with_retry_after(settings: Settings, triton: LocalTriton) -> None:
    gw = start_gateway(
        settings,
        triton.ports.grpc_url,
        "tiny-queue",
        max_queue_inputs=16,
        max_batch_size=4,
        inflight_batches=1,
        retry_after_s=2,
    )
    try:
        async with httpx.AsyncClient(base_url=gw.base_url, timeout=60) as client:
            body = {"model": MODEL, "input": ["some sentence to embed here"] * 8}
            responses = await asyncio.gather(*(client.post("/v1/embeddings", json=body) for _ in range(24)))
        codes = [r.status_code for r in responses]
        assert 200 in codes and 429 in codes, codes
        r429 = next(r for r in responses if r.status_code == 429)
        assert r429.headers["Retry-After"] == "2" and r429.json()["error"]["code"] == "rate_limit_exceeded"
        assert set(codes) <= {200, 429}
    finally:
        gw.stop()


def test_triton_killed_gives_503_then_recovers(settings: Settings) -> None:
    ports = {
        "triton_grpc_port": free_port(),
        "triton_http_port": free_port(),
        "triton_metrics_port": free_port(),
    }
    own = settings.model_copy(update=ports)
    registry = load_registry(own.registry_path)
    t = LocalTriton(own, models=registry.triton_models([MODEL]))
    t.start()
    gw = start_gateway(own, t.ports.grpc_url, "triton-loss", models=MODEL)
    try:
        body = {"model": MODEL, "input": "still here?"}
        assert post(gw, "/v1/embeddings", body).status_code == 200
        assert t.proc is not None
        os.killpg(t.proc.pid, signal.SIGKILL)
        t.proc.wait(10)
        down = post(gw, "/v1/embeddings", body)
        assert down.status_code == 503 and int(down.headers["Retry-After"]) >= 1
        assert down.json()["error"]["code"] == "encoder_unavailable"
        assert httpx.get(f"{gw.base_url}/readyz").status_code == 503
        t2 = LocalTriton(own, models=registry.triton_models([MODEL]))
        t2.start()
        try:
            codes = []
            for _ in range(50):
                r = post(gw, "/v1/embeddings", body)
                codes.append(r.status_code)
                if r.status_code == 200:
                    break
                asyncio.run(asyncio.sleep(0.2))
            assert codes[-1] == 200, codes
            assert httpx.get(f"{gw.base_url}/readyz").status_code == 200
        finally:
            t2.stop()
    finally:
        gw.stop()
        t.stop()


def test_redis_cache_hits_and_outage_degrades(settings: Settings, triton: LocalTriton, workdir) -> None:  # type: ignore[no-untyped-def]
    redis = start_redis(workdir)
    gw = start_gateway(settings, triton.ports.grpc_url, "redis", cache_backend="redis", redis_url=redis.url)
    try:
        body = {"model": MODEL, "input": ["cache me", "and me"]}
        first = post(gw, "/v1/embeddings", body).json()
        second = post(gw, "/v1/embeddings", body).json()
        assert first["data"] == second["data"]
        metrics = httpx.get(f"{gw.base_url}/metrics").text
        assert 'embedfleet_cache_requests_total{backend="redis",result="hit"} 2.0' in metrics
        redis.stop()
        for i in range(5):
            r = post(gw, "/v1/embeddings", {"model": MODEL, "input": [f"no cache {i}", "cache me"]})
            assert r.status_code == 200
        assert r.json()["data"][1]["embedding"] == first["data"][0]["embedding"]
        assert 'embedfleet_cache_errors_total{backend="redis"}' in httpx.get(f"{gw.base_url}/metrics").text
    finally:
        gw.stop()
        if redis.proc.poll() is None:
            redis.stop()
