"""Foundation figures, side by side in one run: tritonserver cold start, and the latency of one sentence
and of a 64-sentence batch through Triton (gRPC, python backend + ORT) vs raw ONNX Runtime in-process.

    python -m bench.triton_latency --out bench/results/triton_latency.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from services.batcher import pad_tokens
from services.config import get_settings
from services.encoders.triton import TritonEncoder
from services.registry import load_registry
from services.tokenizer import TextTokenizer
from services.triton_server import LocalTriton
from tests.corpus import sentences
from trt_build.build import ort_run

MODEL = "all-minilm-l6-v2"


def percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.asarray(samples) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "n": len(ms)}


def time_calls(fn, repeats: int) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


async def triton_calls(url: str, batches: list[tuple[np.ndarray, np.ndarray]], repeats: int) -> list[float]:
    enc = TritonEncoder(url)
    await enc.embed_tokens(MODEL, *batches[0])
    out = []
    for i in range(repeats):
        ids, mask = batches[i % len(batches)]
        t0 = time.perf_counter()
        await enc.embed_tokens(MODEL, ids, mask)
        out.append(time.perf_counter() - t0)
    await enc.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="bench/results/triton_latency.json")
    p.add_argument("--repeats", type=int, default=200)
    a = p.parse_args()
    settings = get_settings()
    spec = load_registry(settings.registry_path).get(MODEL)
    tok = TextTokenizer.for_model(spec)
    texts = sentences(64 * 8)
    singles = [pad_tokens([ids]) for ids in tok.encode(texts[:64]).ids]
    batches64 = [pad_tokens(tok.encode(texts[i : i + 64]).ids) for i in range(0, len(texts), 64)]

    run = ort_run(settings.model_repository / spec.engines["onnx"], threads=os.cpu_count() or 2)
    run(*singles[0])
    raw_single = time_calls(lambda it=iter(singles * a.repeats): run(*next(it)), a.repeats)
    raw_batch = time_calls(lambda it=iter(batches64 * a.repeats): run(*next(it)), max(20, a.repeats // 10))

    colds = []
    for _ in range(3):
        t = LocalTriton(settings, models=[MODEL])
        t.start()
        colds.append(t.cold_start_s)
        t.stop()
    t = LocalTriton(settings, models=[MODEL])
    t.start()
    try:
        tri_single = asyncio.run(triton_calls(t.ports.grpc_url, singles, a.repeats))
        tri_batch = asyncio.run(triton_calls(t.ports.grpc_url, batches64, max(20, a.repeats // 10)))
    finally:
        t.stop()
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg": os.getloadavg()},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "triton_cold_start_s": {"runs": colds, "median": float(np.median(colds))},
        "single_sentence": {"raw_ort": percentiles(raw_single), "triton_grpc": percentiles(tri_single)},
        "batch_64": {"raw_ort": percentiles(raw_batch), "triton_grpc": percentiles(tri_batch)},
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
