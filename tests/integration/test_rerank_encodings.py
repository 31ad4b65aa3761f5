"""Reranking and compact output encodings through the real gateway and tritonserver.

`/v1/rerank` on a random-initialised cross-encoder of a real architecture (weights re-drawn so a dropped
document would show) must give transformers' own scores, in order, in the shape rerank APIs share;
`embedding_types` must give sentence-transformers' int8/binary encodings of the same float vectors."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest

from services.registry import load_registry
from tests.integration.conftest import Gateway

pytestmark = pytest.mark.integration
RERANKER = "rerank-minilm-random"
QUERY = "how do I read a file line by line"
DOCS = [
    "Open the file and iterate over it: each iteration yields one line.",
    "The weather in Lisbon is mild in winter.",
    "Use readlines() to get every line at once, or a for loop to stream them.",
    "Sorting a list in place uses list.sort().",
    "",
]


def post(gw: Gateway, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{gw.base_url}{path}", json=body, timeout=120)


def test_rerank_orders_by_the_cross_encoders_own_scores(gateway: Gateway, settings) -> None:  # type: ignore[no-untyped-def]
    from trt_build.cross_encoder import load_classifier, torch_scores

    r = post(
        gateway,
        "/v1/rerank",
        {"model": RERANKER, "query": QUERY, "documents": DOCS, "return_documents": True},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == RERANKER and body["usage"]["total_tokens"] > 0
    results = body["results"]
    assert sorted(x["index"] for x in results) == list(range(len(DOCS)))
    assert all(
        results[i]["relevance_score"] >= results[i + 1]["relevance_score"] for i in range(len(DOCS) - 1)
    )
    assert all(x["document"]["text"] == DOCS[x["index"]] for x in results)

    spec = load_registry(settings.registry_path).get(RERANKER)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(spec.source_dir()))
    enc = tok(
        [QUERY] * len(DOCS),
        DOCS,
        padding=True,
        truncation=True,
        max_length=spec.max_seq_length,
        return_tensors="np",
    )
    features = (enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    want = 1 / (1 + np.exp(-torch_scores(load_classifier(spec, None), features).reshape(-1)))
    got = {x["index"]: x["relevance_score"] for x in results}
    np.testing.assert_allclose([got[i] for i in range(len(DOCS))], want, atol=1e-5)
    assert np.ptp(want) > 0.01  # re-drawn weights: the documents really score apart

    top = post(
        gateway, "/v1/rerank", {"model": RERANKER, "query": QUERY, "documents": DOCS, "top_n": 2}
    ).json()
    assert [x["index"] for x in top["results"]] == [x["index"] for x in results[:2]]
    assert "document" not in top["results"][0]
    raw = post(
        gateway,
        "/v1/rerank",
        {"model": RERANKER, "query": QUERY, "documents": [{"text": DOCS[0]}], "raw_scores": True},
    )
    assert raw.json()["results"][0]["relevance_score"] == pytest.approx(
        float(np.log(want[0] / (1 - want[0]))), abs=1e-4
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": RERANKER, "query": "", "documents": ["a"]}, "query"),
        ({"model": RERANKER, "query": "q", "documents": []}, "documents"),
        ({"model": RERANKER, "query": "q", "documents": ["a"], "top_n": 0}, "top_n"),
        ({"model": "all-minilm-l6-v2", "query": "q", "documents": ["a"]}, "model"),
        ({"model": "nope", "query": "q", "documents": ["a"]}, "model"),
        ({"model": RERANKER, "query": "q", "documents": [{"txt": "a"}]}, "documents"),
    ],
)
def test_bad_rerank_requests_name_the_field(gateway: Gateway, body: dict, field: str) -> None:
    r = post(gateway, "/v1/rerank", body)
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"]["param"].startswith(field), r.json()


def test_a_reranker_does_not_embed(gateway: Gateway) -> None:
    r = post(gateway, "/v1/embeddings", {"model": RERANKER, "input": "x"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"


def test_embedding_types_match_sentence_transformers(gateway: Gateway) -> None:
    from sentence_transformers.quantization import quantize_embeddings

    texts = ["an int8 vector", "and a binary one", "calibrated once per model"]
    body = {"model": "all-minilm-l6-v2", "inputs": [{"text": t} for t in texts]}
    floats = np.asarray(
        [d["embedding"] for d in post(gateway, "/v1/embed", body).json()["data"]], dtype=np.float32
    )
    types = ["float", "int8", "uint8", "binary", "ubinary"]
    r = post(gateway, "/v1/embed", {**body, "embedding_types": types})
    assert r.status_code == 200, r.text
    got = {k: np.asarray([d["embeddings"][k] for d in r.json()["data"]]) for k in types}
    np.testing.assert_allclose(got["float"], floats, atol=1e-6)
    for kind in ("binary", "ubinary"):
        assert np.array_equal(got[kind], quantize_embeddings(floats, precision=kind))
    assert got["int8"].dtype.kind == "i" and got["int8"].shape == (3, 384)
    assert np.array_equal(got["uint8"].astype(np.int16) - 128, got["int8"])  # one calibration for both
    # the same calibration the next time (stored): int8 vectors stay comparable across requests
    again = post(gateway, "/v1/embed", {**body, "embedding_types": ["int8"]}).json()
    assert np.array_equal(np.asarray([d["embeddings"]["int8"] for d in again["data"]]), got["int8"])
    b64 = post(
        gateway, "/v1/embed", {**body, "embedding_types": ["binary"], "encoding_format": "base64"}
    ).json()
    packed = np.frombuffer(base64.b64decode(b64["data"][0]["embeddings"]["binary"]), dtype=np.int8)
    assert np.array_equal(packed, got["binary"][0]) and packed.nbytes == 48
    bad = post(gateway, "/v1/embed", {**body, "embedding_types": ["int4"]})
    assert bad.status_code == 400 and bad.json()["error"]["param"].startswith("embedding_types")
