"""Online latency while a migration backfill runs, by `backfill_share` (issue 9: "rate-limited by a share of
encoder capacity so online latency holds").

One local Triton (python backend + ONNX Runtime); per setting a fresh Runtime (the gateway's core, no HTTP)
whose backfill lane re-embeds stdlib docstrings non-stop in 64-document requests while `--clients`
online clients each send one query at a time. Reported side by side in one run: online p50/p95/p99 and
queries/s, backfill documents/s, with no backfill and with each share.

    .venv/bin/python -m bench.backfill_share --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from services.config import get_settings
from services.registry import Side
from services.runtime import Runtime
from services.triton_server import LocalTriton
from tests.corpus import stdlib_docs

MODEL = "all-minilm-l6-v2"


async def measure(settings, share: float | None, seconds: float, clients: int) -> dict[str, object]:  # type: ignore[no-untyped-def]
    s = settings.model_copy(update={"backfill_share": share or 1.0})
    rt = Runtime.build(s)
    corpus = stdlib_docs()
    docs = [d.body for d in corpus[: len(corpus) // 2]]
    queries = [d.title for d in corpus[len(corpus) // 2 :]]
    latencies: list[float] = []
    backfilled = 0
    stop = time.perf_counter() + seconds

    async def backfill() -> None:
        nonlocal backfilled
        i = 0
        while time.perf_counter() < stop:
            batch = [docs[(i + k) % len(docs)] for k in range(64)]
            await rt.embedder.embed_texts(MODEL, batch, side=Side.document, lane="backfill")
            backfilled += len(batch)
            i += 64

    async def client(c: int) -> None:
        i = c
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            # distinct text per call: the online path's cache must not answer
            await rt.embedder.embed_texts(MODEL, [f"{queries[i % len(queries)]} #{i}"], side=Side.query)
            latencies.append(time.perf_counter() - t0)
            i += clients

    try:
        await rt.embedder.embed_texts(MODEL, ["warm up"], side=Side.query)
        t0 = time.perf_counter()
        tasks = [client(c) for c in range(clients)] + ([backfill()] if share is not None else [])
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - t0
    finally:
        await rt.close()
    ms = np.array(latencies) * 1000
    return {
        "backfill_share": share,
        "online_queries_per_s": len(latencies) / elapsed,
        "online_ms": {p: float(np.percentile(ms, q)) for p, q in (("p50", 50), ("p95", 95), ("p99", 99))},
        "backfill_docs_per_s": backfilled / elapsed,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--shares", default="none,1.0,0.5,0.25,0.1")
    ap.add_argument("--out", type=Path, default=Path("bench/results/backfill_share.json"))
    a = ap.parse_args()
    base = get_settings(cache_backend="none", models=[MODEL])
    triton = LocalTriton(base, models=[MODEL])
    triton.start()
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            settings = base.model_copy(update={"triton_url": triton.ports.grpc_url, "data_dir": Path(tmp)})
            for raw in a.shares.split(","):
                share = None if raw == "none" else float(raw)
                rows.append(asyncio.run(measure(settings, share, a.seconds, a.clients)))
                print(json.dumps(rows[-1]), flush=True)
    finally:
        triton.stop()
    result = {
        "machine": f"{os.cpu_count()} cores, {platform.platform()}, load avg {os.getloadavg()}",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "model": MODEL,
        "clients": a.clients,
        "seconds": a.seconds,
        "runs": rows,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
