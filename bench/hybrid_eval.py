"""Dense, BM25 and hybrid retrieval side by side on real text nobody here wrote; int8 and binary outputs.

Corpus: the docstring corpus of the migration evaluation (CPython's stdlib, numpy, scipy, scikit-learn,
networkx, sympy; bench/migration_eval.py), its evaluation split, both tasks:
- `firstline-full`: query = a docstring's summary paragraph, document = the whole docstring;
- `summary-rest`: query = the summary, document = the rest (the query's words are mostly not in it).
Dense vectors are all-MiniLM-L6-v2's (sentence-transformers on the same weights the fleet serves; parity
with the served model is tested elsewhere), texts at 128 tokens. Every search goes through the store the
gateway uses (`VectorStore` on Qdrant Edge, in this process): dense, `mode="sparse"` (BM25 with IDF over
the collection), `mode="hybrid"` with RRF (plain and weighted) and DBSF. Metrics: recall@10 and MRR@10 of
the query's own document among all documents of the split.

Output encodings (services/vectors.py, the same code `/v1/embed` answers `embedding_types` with): int8
(ranges calibrated on 1,000 documents) and binary (sign bits; scored by Hamming distance, then the best
4 x 10 rescored with the float query against the +-1 document bits), recall@10 and MRR@10 against the
labels and top-10 overlap with float; bytes per vector.

Latency: one collection of `--latency-points` points (the split's documents repeated, each copy's dense
vector moved by noise so they stay distinct; the same BM25 vectors) on Edge in this process, exact
search below the index threshold: p50/p99 of dense, sparse and hybrid over the same queries.

    nice -n 5 python -m bench.hybrid_eval                      # -> bench/results/hybrid_eval.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.migration_eval import CachedEncoder, model_refs, pairs_in
from services.config import PACKAGE_ROOT, Settings
from services.store import Layout, PointIn, VectorStore, open_store
from services.store.bm25 import bm25_document, bm25_query
from services.vectors import calibrate, quantize

RESULTS = PACKAGE_ROOT / "bench" / "results" / "hybrid_eval.json"
TENANT = "bench"
K = 10
SETUPS: dict[str, dict[str, Any]] = {
    "dense": {"mode": "dense"},
    "bm25": {"mode": "sparse"},
    "hybrid rrf": {"mode": "hybrid"},
    "hybrid rrf weights (1, 2)": {"mode": "hybrid", "weights": (1.0, 2.0)},
    "hybrid rrf weights (2, 1)": {"mode": "hybrid", "weights": (2.0, 1.0)},
    "hybrid dbsf": {"mode": "hybrid", "fusion": "dbsf"},
}


def sparse_of(text: str, opts: dict[str, Any]) -> dict[str, Any]:
    """The search options with the BM25 query vector where the mode uses it."""
    return opts if opts["mode"] == "dense" else {**opts, "sparse_query": bm25_query(text)}


def metrics(ranked: list[list[int]], truth: list[int]) -> dict[str, float]:
    """recall@10 and MRR@10 of each query's own document (index `truth[i]`) in its ranked list."""
    recall = mrr = 0.0
    for ids, want in zip(ranked, truth, strict=True):
        top = ids[:K]
        if want in top:
            recall += 1
            mrr += 1 / (top.index(want) + 1)
    n = len(truth)
    return {"recall@10": round(recall / n, 4), "mrr@10": round(mrr / n, 4)}


def fill(store: VectorStore, name: str, vecs: np.ndarray, docs: list[str], copies: int = 1) -> float:
    rng = np.random.default_rng(0)
    layout = Layout("all-minilm-l6-v2", "1", vecs.shape[1], sparse="bm25")
    store.create_collection(TENANT, name, layout)
    sparse = [bm25_document(d) for d in docs]
    t0 = time.perf_counter()
    for c in range(copies):
        moved = vecs if c == 0 else vecs + rng.normal(0, 0.02, vecs.shape).astype(np.float32)
        points = [PointIn(f"{c}:{i}", moved[i], None, None, sparse[i]) for i in range(len(docs))]
        for j in range(0, len(points), 1024):
            store.upsert(TENANT, name, points[j : j + 1024])
    return time.perf_counter() - t0


def run_setups(
    store: VectorStore, name: str, qvecs: np.ndarray, queries: list[str]
) -> dict[str, list[list[int]]]:
    out: dict[str, list[list[int]]] = {}
    for label, opts in SETUPS.items():
        ranked = []
        for qv, qt in zip(qvecs, queries, strict=True):
            hits = store.search(TENANT, name, qv, top_k=K, with_payload=False, **sparse_of(qt, opts))
            ranked.append([int(h.id.split(":")[1]) for h in hits])
        out[label] = ranked
    return out


def encodings(dvecs: np.ndarray, qvecs: np.ndarray, truth: list[int]) -> dict[str, Any]:
    ranges = calibrate(dvecs[:1000])
    float_top = np.argsort(-(qvecs @ dvecs.T), axis=1)[:, :K]
    i8 = quantize(dvecs, ranges, "int8").astype(np.int32)
    q8 = quantize(qvecs, ranges, "int8").astype(np.int32)
    i8_top = np.argsort(-(q8 @ i8.T), axis=1)[:, :K]
    bits = np.unpackbits(quantize(dvecs, None, "ubinary"), axis=1)[:, : dvecs.shape[1]].astype(np.float32)
    qbits = np.unpackbits(quantize(qvecs, None, "ubinary"), axis=1)[:, : dvecs.shape[1]].astype(np.float32)
    hamming = qbits @ (1 - bits).T + (1 - qbits) @ bits.T
    cand = np.argsort(hamming, axis=1, kind="stable")[:, : 4 * K]
    signs = bits * 2 - 1
    rescored = np.take_along_axis(cand, np.argsort(-np.einsum("qd,qkd->qk", qvecs, signs[cand]), axis=1), 1)
    b_plain = cand[:, :K]
    b_top = rescored[:, :K]

    def row(top: np.ndarray, size: int) -> dict[str, Any]:
        overlap = float(np.mean([len(set(a) & set(b)) / K for a, b in zip(top, float_top, strict=True)]))
        return {**metrics(top.tolist(), truth), "top10_overlap_with_float": round(overlap, 4), "bytes": size}

    d = dvecs.shape[1]
    return {
        "float": row(float_top, 4 * d),
        "int8": row(i8_top, d),
        "binary, hamming only": row(b_plain, d // 8),
        "binary, rescored (4 x 10 candidates)": row(b_top, d // 8),
    }


def latency(store: VectorStore, name: str, qvecs: np.ndarray, queries: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label in ("dense", "bm25", "hybrid rrf"):
        opts = SETUPS[label]
        times = []
        for qv, qt in zip(qvecs, queries, strict=True):
            t0 = time.perf_counter()
            store.search(TENANT, name, qv, top_k=K, with_payload=False, **sparse_of(qt, opts))
            times.append(1000 * (time.perf_counter() - t0))
        out[label] = {
            "p50_ms": round(float(np.percentile(times, 50)), 2),
            "p99_ms": round(float(np.percentile(times, 99)), 2),
        }
    out["hybrid / dense p50"] = round(out["hybrid rrf"]["p50_ms"] / out["dense"]["p50_ms"], 2)
    return out


def table(results: dict[str, dict[str, float]]) -> list[str]:
    best = {m: max(r[m] for r in results.values()) for m in ("recall@10", "mrr@10")}
    lines = ["| setup | recall@10 | MRR@10 |", "|---|---|---|"]
    for label, r in results.items():
        cells = [f"**{r[m]:.3f}**" if r[m] == best[m] else f"{r[m]:.3f}" for m in ("recall@10", "mrr@10")]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--queries", type=int, default=400)
    p.add_argument("--latency-points", type=int, default=100_000)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args()
    encoder = CachedEncoder(model_refs(128)["v1"])
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg": os.getloadavg()},
        "tasks": {},
    }
    with tempfile.TemporaryDirectory(dir="/dev/shm") as tmp:
        store = open_store(Settings(data_dir=Path(tmp), store_index_threshold=10**9))
        for task in ("firstline-full", "summary-rest"):
            pairs = pairs_in("eval", task=task)
            docs = [q.document for q in pairs]
            queries = [q.query for q in pairs[: args.queries]]
            t0 = time.perf_counter()
            dvecs, qvecs = encoder.encode(docs), encoder.encode(queries)
            embed_s = time.perf_counter() - t0
            name = f"eval-{task}"
            fill(store, name, dvecs, docs)
            truth = list(range(len(queries)))
            ranked = run_setups(store, name, qvecs, queries)
            results = {label: metrics(r, truth) for label, r in ranked.items()}
            report["tasks"][task] = {
                "documents": len(docs),
                "queries": len(queries),
                "embed_s": round(embed_s, 1),
                "retrieval": results,
                "table": table(results),
                "encodings": encodings(dvecs, qvecs, truth),
            }
            print(task, json.dumps(results), flush=True)
            if task == "firstline-full" and args.latency_points:
                copies = max(1, args.latency_points // len(docs))
                fill_s = fill(store, "latency", dvecs, docs, copies)
                report["latency"] = {
                    "points": copies * len(docs),
                    "fill_s": round(fill_s, 1),
                    "exact (no HNSW build)": True,
                    **latency(store, "latency", qvecs[:200], queries[:200]),
                }
                store.delete_collection(TENANT, "latency")
                print("latency", json.dumps(report["latency"]), flush=True)
        store.close()
    report["machine"]["loadavg_end"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
