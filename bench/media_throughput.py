"""Images/s and videos/s: through the gateway (`/v1/embed`, LiT test model `lit-shapes`) vs the raw encoder.

Raw: ONNX Runtime in-process on the same file Triton serves (trt_build/assets/lit-shapes/model.onnx) at
several batch sizes; "excluded" feeds already-preprocessed pixel arrays, "included" starts from the PNG
or mp4 bytes and uses the gateway's own decoders (services.media), so the two differ only by serving.
Videos: 8 uniformly sampled frames each, mean-pooled, as the gateway does. The raw best batch is measured
again after the served runs (the machine is shared and its speed drifts) and the ratio uses the mean.

Served: `embedfleet serve` on loopback (cache off, so repeated images are really encoded), loaded by
`clients` threads each sending `batch` base64 items per request, for a bounded time.

    python -m bench.media_throughput --out bench/results/media.json
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.gateway_throughput import serving
from bench.indexing_search import machine, percentiles, rss_mb
from services.config import Settings, get_settings
from services.media.images import decode_image
from services.media.video import decode_video
from services.registry import Image as ImageSpec
from services.registry import load_registry
from trt_build.build import ort_run
from trt_build.synthetic.shapes import held_out_items, render_video

MODEL = "lit-shapes"
ONNX = Path("trt_build/assets/lit-shapes/model.onnx")
BATCHES = (1, 8, 32, 64, 128)


def media() -> tuple[list[bytes], list[bytes]]:
    """PNG bytes of the held-out synthetic images, and small mp4s (16 frames, 64x64) of the first 32."""
    items = held_out_items()
    pngs = []
    for it in items:
        buf = io.BytesIO()
        it.image.save(buf, format="PNG")
        pngs.append(buf.getvalue())
    videos = [render_video(it.attrs, seed=i) for i, it in enumerate(items[:32])]
    return pngs, videos


def best_rate(run: Callable[[int], None], n_items: int, batch_sizes: tuple[int, ...]) -> dict[str, float]:
    """items/s of `run(batch)` (which processes all `n_items` in batches) per batch size: best of two."""
    out: dict[str, float] = {}
    for b in batch_sizes:
        best = 0.0
        for _ in range(2):
            t0 = time.perf_counter()
            run(b)
            best = max(best, n_items / (time.perf_counter() - t0))
        out[f"b{b}"] = best
    return out


class Raw:
    """The encoder in-process: pixel arrays in, normalized embeddings out."""

    def __init__(self, settings: Settings, spec: ImageSpec, frames: int) -> None:
        self.run = ort_run(ONNX, threads=os.cpu_count() or 2)
        self.settings, self.spec, self.frames = settings, spec, frames

    def encode(self, pixels: np.ndarray, batch: int) -> np.ndarray:
        out = np.concatenate([self.run(pixels[i : i + batch]) for i in range(0, len(pixels), batch)])
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def images(self, pngs: list[bytes], pixels: np.ndarray | None = None) -> dict[str, float]:
        """With `pixels` given, preprocessing is excluded; otherwise each batch decodes its PNGs."""
        if pixels is not None:
            return best_rate(lambda b: self.encode(pixels, b), len(pixels), BATCHES)

        def run(b: int) -> None:
            for i in range(0, len(pngs), b):
                self.encode(np.stack([decode_image(x, self.settings, self.spec) for x in pngs[i : i + b]]), b)

        return best_rate(run, len(pngs), BATCHES)

    def videos(self, clips: list[bytes], frames: list[np.ndarray] | None = None) -> dict[str, float]:
        """Videos/s; batch = videos per encoder call (batch x 8 frames)."""

        def run(b: int) -> None:
            for i in range(0, len(clips), b):
                chunk = (
                    frames[i : i + b] if frames is not None else [self.decode(x) for x in clips[i : i + b]]
                )
                vec = self.encode(np.concatenate(chunk), len(chunk) * self.frames)
                pooled = np.add.reduceat(vec, np.cumsum([0, *(len(c) for c in chunk[:-1])]))
                pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)

        return best_rate(run, len(clips), (1, 4, 16))

    def decode(self, clip: bytes) -> np.ndarray:
        return decode_video(clip, self.settings, self.frames, self.spec)[0]


def served(url: str, kind: str, items: list[str], clients: int, batch: int, seconds: float) -> dict[str, Any]:
    """Closed loop: `clients` threads, `batch` items per /v1/embed request, until `seconds` pass."""
    stop = time.perf_counter() + seconds
    lock = threading.Lock()
    lat: list[float] = []
    statuses: dict[int, int] = {}

    def client(cid: int) -> None:
        i = cid * batch
        with httpx.Client(timeout=120) as http:
            while time.perf_counter() < stop:
                chunk = [{kind: items[(i + k) % len(items)]} for k in range(batch)]
                i += batch * clients
                t0 = time.perf_counter()
                r = http.post(f"{url}/v1/embed", json={"model": MODEL, "inputs": chunk})
                with lock:
                    lat.append((time.perf_counter() - t0) * 1000)
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - started
    ok = statuses.get(200, 0)
    return {
        "clients": clients,
        "batch": batch,
        "statuses": statuses,
        f"{kind}s_per_s": ok * batch / wall,
        **percentiles(lat),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="bench/results/media.json")
    p.add_argument("--seconds", type=float, default=20.0, help="per served configuration")
    a = p.parse_args()
    started = time.perf_counter()
    settings = get_settings()
    tower = load_registry(settings.registry_path).get("lit-shapes-image")
    assert tower.image is not None
    raw = Raw(settings, tower.image, tower.video_frames)
    pngs, clips = media()
    pixels = np.stack([decode_image(x, settings, tower.image) for x in pngs])
    frames = [raw.decode(c) for c in clips]

    def raw_all() -> dict[str, dict[str, float]]:
        return {
            "images_preprocessing_excluded": raw.images(pngs, pixels),
            "images_preprocessing_included": raw.images(pngs),
            "videos_decode_excluded": raw.videos(clips, frames),
            "videos_decode_included": raw.videos(clips),
        }

    before = raw_all()
    print("raw", json.dumps(before), flush=True)
    env = {"EMBEDFLEET_MODELS": MODEL, "EMBEDFLEET_CACHE_BACKEND": "none", "EMBEDFLEET_LOG_LEVEL": "warning"}
    b64_png = [base64.b64encode(x).decode() for x in pngs]
    b64_mp4 = [base64.b64encode(x).decode() for x in clips]
    with serving(env) as (url, proc):
        served(url, "image", b64_png, 4, 8, 3)  # warm-up
        runs = {
            "images_8_clients_x1": served(url, "image", b64_png, 8, 1, a.seconds),
            "images_4_clients_x32": served(url, "image", b64_png, 4, 32, a.seconds),
            "videos_4_clients_x1": served(url, "video", b64_mp4, 4, 1, a.seconds),
            "videos_2_clients_x8": served(url, "video", b64_mp4, 2, 8, a.seconds),
        }
        gateway_rss = rss_mb(proc.pid)
    for k, v in runs.items():
        print(k, json.dumps(v), flush=True)
    after = raw_all()
    ref = {k: float(np.mean([max(before[k].values()), max(after[k].values())])) for k in before}
    best_img = max(r["images_per_s"] for k, r in runs.items() if k.startswith("images"))
    best_vid = max(r["videos_per_s"] for k, r in runs.items() if k.startswith("videos"))
    result = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "model": MODEL,
        "items": {"images": len(pngs), "videos": len(clips), "frames_per_video": tower.video_frames},
        "raw_ort": {"before": before, "after": after, "best_mean": ref},
        "served": runs,
        "gateway_rss_mb": gateway_rss,
        "ratio_images_vs_raw_incl_preprocessing": best_img / ref["images_preprocessing_included"],
        "ratio_images_vs_raw_excl_preprocessing": best_img / ref["images_preprocessing_excluded"],
        "ratio_videos_vs_raw_incl_decode": best_vid / ref["videos_decode_included"],
        "ratio_videos_vs_raw_excl_decode": best_vid / ref["videos_decode_excluded"],
        "wall_s": time.perf_counter() - started,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k.startswith("ratio") or k == "raw_ort"}, indent=1))


if __name__ == "__main__":
    main()
