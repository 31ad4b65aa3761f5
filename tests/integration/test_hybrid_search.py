"""Hybrid dense + BM25 search, diversity and reranking on search, through the gateway and tritonserver.

The corpus is forty incident reports about failed uploads, each with its own error identifier, a
release note that names one more identifier in another context, and two unrelated documents. Asked for
"error <that identifier>", MiniLM ranks the release note last (the query reads like every upload report);
BM25 ranks it first (the identifier is its rarest term); hybrid keeps it in the top 5.
"""

from __future__ import annotations

import random
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Gateway

pytestmark = pytest.mark.integration
MODEL = "all-minilm-l6-v2"
RERANKER = "rerank-minilm-random"
TARGET = "notes-4.2"


def code(i: int) -> str:
    rng = random.Random(i)
    return f"E{rng.randrange(1000, 9999)}{rng.choice('QXZKV')}{rng.choice('QXZKV')}"


DOCS = [
    {
        "id": f"doc-{i}",
        "text": f"The nightly upload job failed with error {code(i)} after the storage node ran out of disk.",
        "payload": {"team": "storage" if i % 2 else "platform"},
    }
    for i in range(40)
] + [
    {
        "id": TARGET,
        "text": f"Release notes 4.2: fixed {code(99)} in the billing export; invoices round to cents.",
    },
    {"id": "other-1", "text": "How to bake sourdough bread with a long cold fermentation."},
    {"id": "other-2", "text": "Quarterly planning notes for the design team."},
]


def post(gw: Gateway, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{gw.base_url}{path}", json=body, timeout=120)


@pytest.fixture(scope="module")
def collection(gateway: Gateway) -> str:
    name = "hybrid-incidents"
    r = post(gateway, "/v1/collections", {"name": name, "model": MODEL, "sparse": "bm25"})
    assert r.status_code == 201, r.text
    assert r.json()["sparse"] == "bm25"
    r = httpx.put(
        f"{gateway.base_url}/v1/collections/{name}/documents", json={"documents": DOCS}, timeout=300
    )
    assert r.status_code == 200, r.text
    return name


def search(gw: Gateway, name: str, **body: Any) -> httpx.Response:
    return post(gw, f"/v1/collections/{name}/search", body)


def ids(r: httpx.Response) -> list[str]:
    assert r.status_code == 200, r.text
    return [h["id"] for h in r.json()["results"]]


def test_exact_identifier_missed_by_dense_is_found_by_hybrid(gateway: Gateway, collection: str) -> None:
    query = {"text": f"error {code(99)}"}
    dense = ids(search(gateway, collection, query=query, top_k=5))
    assert TARGET not in dense, dense
    sparse = ids(search(gateway, collection, query=query, top_k=5, mode="sparse"))
    assert sparse[0] == TARGET
    for extra in ({}, {"fusion": "dbsf"}, {"weights": [1.0, 3.0]}):
        hybrid = ids(search(gateway, collection, query=query, top_k=5, mode="hybrid", **extra))
        assert TARGET in hybrid and hybrid != dense, (extra, hybrid)
    # the tenant's filter applies to both stages
    filtered = ids(
        search(
            gateway,
            collection,
            query=query,
            top_k=5,
            mode="hybrid",
            filter={"must": [{"key": "team", "match": {"value": "platform"}}]},
        )
    )
    assert TARGET not in filtered and len(filtered) == 5
    assert all(int(i.split("-")[1]) % 2 == 0 for i in filtered)


def test_diversity_spreads_the_hits(gateway: Gateway, collection: str) -> None:
    query = {"text": "storage node out of space"}
    plain = ids(search(gateway, collection, query=query, top_k=5))
    diverse = ids(search(gateway, collection, query=query, top_k=5, diversity=0.9, candidates=42))
    assert all(i.startswith("doc-") for i in plain)
    assert any(i.startswith("other-") for i in diverse), diverse  # MMR reaches past the near-duplicates
    assert diverse[0] == plain[0]  # the first pick is the most relevant one


def test_rerank_on_search_orders_the_hits_by_the_cross_encoder(gateway: Gateway, collection: str) -> None:
    query = {"text": f"error {code(99)}"}
    r = search(
        gateway, collection, query=query, top_k=8, mode="hybrid", rerank={"model": RERANKER, "top_n": 4}
    )
    assert r.status_code == 200, r.text
    hits = r.json()["results"]
    assert r.json()["reranked_by"] == RERANKER and len(hits) == 4
    texts = {d["id"]: d["text"] for d in DOCS}
    first = ids(search(gateway, collection, query=query, top_k=8, mode="hybrid"))
    ref = post(
        gateway,
        "/v1/rerank",
        {"model": RERANKER, "query": query["text"], "documents": [texts[i] for i in first], "top_n": 4},
    ).json()["results"]
    assert [h["id"] for h in hits] == [first[x["index"]] for x in ref]
    assert [round(h["score"], 5) for h in hits] == [round(x["relevance_score"], 5) for x in ref]


@pytest.mark.parametrize(
    ("body", "field", "status"),
    [
        ({"mode": "sparse"}, "mode", 400),  # the plain collection has no BM25 vectors
        ({"mode": "fuzzy"}, "mode", 400),
        ({"mode": "dense", "fusion": "rrf"}, "fusion", 400),
        ({"mode": "hybrid", "fusion": "max"}, "fusion", 400),
        ({"mode": "hybrid", "weights": [1.0, 0.0]}, "weights", 400),
        ({"mode": "hybrid", "fusion": "dbsf", "weights": [1.0, 2.0]}, "weights", 400),
        ({"diversity": 1.5}, "diversity", 400),
        ({"mode": "sparse", "diversity": 0.5}, "diversity", 400),
        ({"diversity": 0.5, "candidates": 100_000}, "candidates", 400),
        ({"rerank": {"model": MODEL}}, "rerank.model", 400),
        ({"rerank": {"model": "no-such-model"}}, "rerank.model", 404),
        ({"top_k": 3, "rerank": {"model": RERANKER, "top_n": 5}}, "rerank", 400),
        ({"rerank": {"model": RERANKER, "top_n": 0}}, "rerank.top_n", 400),
    ],
)
def test_invalid_search_parameters_are_refused_naming_them(
    gateway: Gateway, body: dict[str, Any], field: str, status: int
) -> None:
    name = "hybrid-plain"
    if httpx.get(f"{gateway.base_url}/v1/collections/{name}").status_code == 404:
        assert post(gateway, "/v1/collections", {"name": name, "model": MODEL}).status_code == 201
        docs = {"documents": [{"id": "a", "text": "hello world"}]}
        assert httpx.put(f"{gateway.base_url}/v1/collections/{name}/documents", json=docs).status_code == 200
    r = search(gateway, name, query={"text": "hello"}, **body)
    assert r.status_code == status, (body, r.text)
    assert r.json()["error"]["param"] == field, (body, r.json())


def test_sparse_modes_need_a_query_text(gateway: Gateway, collection: str) -> None:
    from tests.integration.test_multimodal import b64, png
    from trt_build.synthetic.shapes import held_out_items

    image = b64(png(held_out_items()[0].image))
    r = search(gateway, collection, query={"image": image}, mode="hybrid")
    assert r.status_code == 400 and r.json()["error"]["param"] == "mode", r.text


def test_an_existing_collection_gains_bm25_by_a_backfill(gateway: Gateway) -> None:
    """The same model with `sparse: bm25`: a migration that only changes the layout; reads stay on the
    old physical meanwhile (sparse search is refused there, naming `mode`), then hybrid works."""
    import time

    name = "hybrid-later"
    base = gateway.base_url
    assert post(gateway, "/v1/collections", {"name": name, "model": MODEL}).status_code == 201
    r = httpx.put(f"{base}/v1/collections/{name}/documents", json={"documents": DOCS}, timeout=300)
    assert r.status_code == 200, r.text
    query = {"text": f"error {code(99)}"}
    before = search(gateway, name, query=query, mode="hybrid")
    assert before.status_code == 400 and before.json()["error"]["param"] == "mode", before.text
    r = post(gateway, f"/v1/collections/{name}/migrations", {"to_model": MODEL, "sparse": "bm25"})
    assert r.status_code == 202, r.text
    deadline = time.time() + 180
    while time.time() < deadline:
        mig = httpx.get(f"{base}/v1/collections/{name}/migrations", timeout=30).json()
        if mig["state"] in ("done", "failed", "cancelled"):
            break
        time.sleep(0.5)
    assert mig["state"] == "done", mig
    info = httpx.get(f"{base}/v1/collections/{name}", timeout=30).json()
    assert info["sparse"] == "bm25" and info["model"] == MODEL, info
    assert TARGET in ids(search(gateway, name, query=query, mode="hybrid", top_k=5))
    assert ids(search(gateway, name, query=query, mode="sparse", top_k=1)) == [TARGET]
    again = post(gateway, f"/v1/collections/{name}/migrations", {"to_model": MODEL, "sparse": "bm25"})
    assert again.status_code == 400 and again.json()["error"]["param"] == "to_model", again.text
