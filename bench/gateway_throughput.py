"""Served (gateway + Triton) vs raw in-process ONNX Runtime, measured side by side in one run.

Raw: ORT on the same sentences, batches sorted by length, at several batch sizes; its best is the
reference. Served: `embedfleet serve` on loopback, loaded by bench/loadgen.py in a separate process with
(a) 64 concurrent single-sentence clients and (b) 16 clients x 16-sentence requests. Raw is measured
before and after the served runs (this machine's speed drifts), and the ratio uses their mean.

    python -m bench.gateway_throughput --out bench/results/gateway_cpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from bench.corpus import sentences
from services.config import get_settings
from services.registry import load_registry
from services.tokenizer import TextTokenizer
from services.triton_server import free_port
from trt_build.build import ort_run


def raw_ort(
    texts: list[str], batch_sizes: tuple[int, ...] = (32, 64, 128), repeats: int = 2
) -> dict[str, float]:
    settings = get_settings()
    spec = load_registry(settings.registry_path).get("all-minilm-l6-v2")
    tok = TextTokenizer.for_model(spec)
    run = ort_run(settings.model_repository / spec.engines["onnx"], threads=os.cpu_count() or 2)
    ids = tok.encode(texts).ids
    order = np.argsort([len(x) for x in ids])
    out: dict[str, float] = {}
    from services.batcher import pad_tokens

    for b in batch_sizes:
        best = 0.0
        for _ in range(repeats):
            t0 = time.perf_counter()
            for i in range(0, len(order), b):
                rows = [ids[j] for j in order[i : i + b]]
                run(*pad_tokens(rows))
            best = max(best, len(texts) / (time.perf_counter() - t0))
        out[f"b{b}"] = best
    return out


def wait_ready(url: str, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"gateway at {url} not ready")


@contextlib.contextmanager
def serving(env: dict[str, str], timeout: float = 300) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`embedfleet serve` (gateway + local Triton) on a free loopback port; stopped on exit."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    full = {**os.environ, "EMBEDFLEET_HOST": "127.0.0.1", "EMBEDFLEET_PORT": str(port), **env}
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "serve"],
        env=full,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_ready(url, timeout)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def load(
    url: str, texts_file: str, clients: int, batch: int, requests: int, seconds: float
) -> dict[str, object]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.loadgen",
            "--url",
            url,
            "--texts",
            texts_file,
            "--clients",
            str(clients),
            "--batch",
            str(batch),
            "--requests",
            str(requests),
            "--seconds",
            str(seconds),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="bench/results/gateway_cpu.json")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--seconds", type=float, default=20.0)
    a = p.parse_args()
    texts = sentences(a.n)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(texts, f)
    with serving({"EMBEDFLEET_CACHE_BACKEND": "none"}) as (url, _):
        load(url, f.name, 16, 4, 200, 10)  # warm-up
        raw_before = raw_ort(texts)
        single = load(url, f.name, 64, 1, a.n * 2, a.seconds)
        multi = load(url, f.name, 16, 16, a.n, a.seconds)
        raw_after = raw_ort(texts)
    raw_best = float(np.mean([max(raw_before.values()), max(raw_after.values())]))
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "sentences": a.n,
        "raw_ort": {"before": raw_before, "after": raw_after, "best_mean": raw_best},
        "served_single_64_clients": single,
        "served_16x16": multi,
        "ratio_single": float(single["sentences_per_s"]) / raw_best,  # type: ignore[arg-type]
        "ratio_16x16": float(multi["sentences_per_s"]) / raw_best,  # type: ignore[arg-type]
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("raw_ort", "ratio_single", "ratio_16x16")}, indent=1))
    for k in ("served_single_64_clients", "served_16x16"):
        r = result[k]
        print(k, {x: r[x] for x in ("sentences_per_s", "p50_ms", "p95_ms", "p99_ms", "statuses")})  # type: ignore[index]


if __name__ == "__main__":
    main()
