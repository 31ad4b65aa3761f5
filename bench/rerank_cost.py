"""What `/v1/rerank` adds per query-document pair over the cross-encoder itself, measured side by side.

Raw: the same ONNX file Triton serves (`model_repository/rerank-minilm-random/1/model.onnx`) run by ONNX
Runtime in this process on the gateway's own pair tokenization, one call per query with all its
documents (what one rerank request becomes). Served: `embedfleet serve` with the reranker, the same
query and documents posted one request at a time (no concurrency: latency, not throughput). Both are
measured for 8, 32 and 100 documents of docstring text (~60-128 tokens a pair); the raw runs are done
before and after the served ones and averaged. Reported: p50 per request, and
(served p50 - raw p50) / documents = the serving cost per pair.

    nice -n 5 python -m bench.rerank_cost            # -> bench/results/rerank_cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.gateway_throughput import serving
from bench.indexing_search import machine
from services.config import PACKAGE_ROOT, get_settings
from services.registry import load_registry
from services.tokenizer import TextTokenizer
from tests.corpus import stdlib_docs
from trt_build.parity import ort_run

MODEL = "rerank-minilm-random"
RESULTS = PACKAGE_ROOT / "bench" / "results" / "rerank_cost.json"
SIZES = (8, 32, 100)


def raw(query: str, docs: list[str], reps: int) -> float:
    settings = get_settings()
    spec = load_registry(settings.registry_path).get(MODEL)
    tok = TextTokenizer.for_model(spec)
    run = ort_run(settings.model_repository / MODEL / "1" / "model.onnx", threads=os.cpu_count() or 2)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        pairs = tok.encode_pairs(query, docs)
        width = max(pairs.lengths)
        ids = np.zeros((len(docs), width), np.int64)
        types = np.zeros_like(ids)
        mask = np.zeros_like(ids)
        for i, (a, b) in enumerate(zip(pairs.ids, pairs.type_ids, strict=True)):
            ids[i, : len(a)], types[i, : len(b)], mask[i, : len(a)] = a, b, 1
        run(ids, mask, types)
        times.append(1000 * (time.perf_counter() - t0))
    return float(np.percentile(times, 50))


def served(url: str, query: str, docs: list[str], reps: int) -> float:
    times = []
    with httpx.Client(timeout=120) as c:
        for _ in range(reps):
            t0 = time.perf_counter()
            r = c.post(f"{url}/v1/rerank", json={"model": MODEL, "query": query, "documents": docs})
            assert r.status_code == 200, r.text
            times.append(1000 * (time.perf_counter() - t0))
    return float(np.percentile(times, 50))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args()
    docs = [d.body for d in stdlib_docs()[:200]]
    query = "how do I read a file line by line"
    before = {n: raw(query, docs[:n], args.reps) for n in SIZES}
    env = {"EMBEDFLEET_MODELS": MODEL, "EMBEDFLEET_CACHE_BACKEND": "none"}
    with serving(env) as server:
        served(server.url, query, docs[:8], 5)  # warm-up
        got = {n: served(server.url, query, docs[:n], args.reps) for n in SIZES}
    after = {n: raw(query, docs[:n], args.reps) for n in SIZES}
    rows: dict[str, Any] = {}
    for n in SIZES:
        ref = (before[n] + after[n]) / 2
        rows[str(n)] = {
            "raw_p50_ms": round(ref, 2),
            "raw_before_after_ms": [round(before[n], 2), round(after[n], 2)],
            "served_p50_ms": round(got[n], 2),
            "added_ms_per_pair": round((got[n] - ref) / n, 3),
            "encoder_ms_per_pair": round(ref / n, 3),
        }
        print(n, json.dumps(rows[str(n)]), flush=True)
    report = {
        "machine": machine(),
        "model": MODEL,
        "query": query,
        "documents": rows,
        "loadavg": os.getloadavg(),
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
