"""VLM engine on a GPU: the language model eager vs replayed from CUDA graphs, side by side in one run.

A random Qwen2-VL backbone of VLM2Vec-V2's shape (Qwen2-VL-2B: nothing can be downloaded) or a local
folder (`--model-dir`); text-only queries (what a search sends) and one-image items, batches of 1, 4 and
16 through `VlmEngine.embed`: ms a batch eager and with the graphs, and the cosine between the two
(bf16 on CUDA). `--size tiny --device cpu` runs the same code on a tiny backbone, where no graph is
captured and the padded path runs eagerly: the test suite runs it so, the figures mean nothing there.

    python -m bench.vlm_gpu --out bench/results/vlm_gpu_h200.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

from bench.indexing_search import machine
from services.media import qwen2vl as q
from services.vlm import engine_inputs
from trt_build.buckets import BucketSet
from trt_build.vlm_model import VlmEngine, VlmRequest
from trt_build.vlm_random import SIZES, build_random

BATCHES = (1, 4, 16)
QUERY = "Find me an everyday image that matches the given caption: a red square on a blue background"
IMAGE_PROMPT = "<|image_pad|>\nRepresent the given image.\n"


def items(cfg: q.QwenVLConfig, tok: Tokenizer, kind: str, n: int) -> list[q.PreparedItem]:
    """n prepared items: a text query, or a 448 x 336 noise image with VLM2Vec's document prompt."""
    rng = np.random.default_rng(0)
    out = []
    for k in range(n):
        if kind == "text":
            out.append(q.prepare_item(tok.encode(f"{QUERY} {k}").ids, [], cfg))
        else:
            image = rng.integers(0, 256, (336, 448, 3), dtype=np.uint8)
            out.append(q.prepare_item(tok.encode(IMAGE_PROMPT).ids, [q.prepare_image(image, cfg)], cfg))
    return out


def timed(run: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median ms of `repeats` calls after two warm-up calls, and the last result."""
    out = run()
    run()
    ms = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = run()
        ms.append((time.perf_counter() - t0) * 1000)
    return statistics.median(ms), out


def measure(engine: VlmEngine, folder: Path, repeats: int) -> dict[str, Any]:
    """Each (kind, batch): eager (no buckets) and bucketed (graphs where captured), in turns."""
    buckets = engine.buckets
    pre = json.loads((folder / "preprocessor_config.json").read_text())
    cfg = q.config_from_hf(pre, json.loads((folder / "config.json").read_text()))
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    rows: dict[str, Any] = {}
    for kind in ("text", "image"):
        for b in BATCHES:
            request = [VlmRequest(*engine_inputs(items(cfg, tok, kind, b)))]

            def embed(r: list[VlmRequest] = request) -> np.ndarray:
                (out,) = engine.embed(r)
                assert isinstance(out, np.ndarray), out
                return out

            engine.buckets = None
            eager_ms, eager = timed(embed, repeats)
            engine.buckets = buckets
            graph_ms, graphed = timed(embed, repeats)
            cos = float(np.min(np.sum(eager * graphed, axis=1)))  # both L2-normalized
            rows[f"{kind}_b{b}"] = {
                "eager_ms": round(eager_ms, 3),
                "graph_ms": round(graph_ms, 3),
                "speedup": round(eager_ms / graph_ms, 3),
                "min_cosine": round(cos, 6),
                "tokens": int(request[0].lengths.max()),
            }
            print(kind, b, rows[f"{kind}_b{b}"], flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, default=None, help="a local Qwen2-VL-family folder")
    p.add_argument("--size", choices=sorted(SIZES), default="2b", help="random backbone when no folder")
    p.add_argument("--device", default="cuda")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--max-seq", type=int, default=1024, help="largest sequence bucket")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench.vlm_gpu needs a CUDA GPU here (or --device cpu --size tiny for a dry run)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = a.model_dir or build_random(Path(tmp) / "backbone", "qwen2-vl", size=SIZES[a.size])
        buckets = BucketSet.from_limits(max(BATCHES), a.max_seq, max(BATCHES) * a.max_seq)
        engine = VlmEngine.load(str(folder), device=a.device, dtype="bfloat16", buckets=buckets)
        t0 = time.perf_counter()
        graphs = engine.capture()
        capture_s = time.perf_counter() - t0
        report = {
            "machine": machine(),
            "gpu": torch.cuda.get_device_name(0) if a.device == "cuda" else None,
            "model": str(a.model_dir) if a.model_dir else f"random qwen2-vl, {a.size}",
            "buckets": str(buckets),
            "graphs": graphs,
            "capture_s": round(capture_s, 2),
            "rows": measure(engine, folder, a.repeats),
        }
    text = json.dumps(report, indent=2) + "\n"
    if a.out:
        a.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
