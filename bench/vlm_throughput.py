"""Images/s and videos/s of a `vlm` model through the gateway vs the engine in-process, same inputs.

Engine in-process ("raw"): the gateway's own preprocessing (`services.vlm.VlmModel.prepare`: decode,
smart resize, patchify, prompt with placeholders expanded) and the Triton model's engine core
(`trt_build.vlm_model.VlmEngine`, torch fp32 on CPU, with the served engine's torch thread count,
`triton_torch_threads`) called in batches of 1, 4, 8 and 16 in one thread. The reference is its best
batch of at most `clients` items (8 clients with one item each never have more than 8 items to batch);
the best of all batches is reported beside it. The machine is shared and its speed drifts, so raw and
served runs take turns per kind (raw, served, raw, served, raw: `--rounds` served runs), the server idle
while raw runs; each served run is compared with the mean of the raw runs either side of it, and each raw
batch size runs for `--raw-seconds` (one pass over 96 images was 0.3 s, too short a sample). The
preprocessing share of the raw time is reported beside it: the part of the work the gateway does itself.

Served: `embedfleet serve` on loopback (cache off, so every item is encoded), `clients` closed-loop
clients of bench/loadgen.py (its own process) each sending one item per request, for a bounded time;
the CPU seconds of the gateway, of tritonserver and of the engine (the python-backend stub, one thread)
are read from /proc, so the preprocessing share of the served path shows too (the gateway process does
it), and so does which process bounds the served rate.

Inputs: held-out vlm-shapes renders (PNG, 64 px) with the image-document prompt, and 8-frame mp4 clips.

`--random-size small` serves, instead of vlm-shapes (1.7 M parameters, whose forward costs about what the
serving around it does), a random Qwen2-VL backbone of that size (`trt_build.vlm_random.SIZES`; the real
Qwen2 vocabulary) under vlm-shapes' registry entry and preprocessor config, so only the backbone differs:
the same grids, prompts, limits and batching. It is built into a temporary registry and model repository.

    nice -n 5 python -m bench.vlm_throughput          # -> bench/results/vlm_throughput.json
    nice -n 5 python -m bench.vlm_throughput --random-size small --out bench/results/vlm_throughput_small.json
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import yaml

from bench.gateway_throughput import CpuMeter, load, serving
from bench.indexing_search import machine
from services.config import PACKAGE_ROOT, Settings
from services.registry import Side, load_registry
from services.vlm import VlmItem, VlmModel, engine_inputs, vlm_template
from trt_build.synthetic import shapes
from trt_build.synthetic import train_vlm as tv
from trt_build.vlm_model import VlmEngine, VlmRequest
from trt_build.vlm_random import SIZES, build_random

MODEL = "vlm-shapes"
RESULTS = PACKAGE_ROOT / "bench" / "results" / "vlm_throughput.json"
BATCHES = (1, 4, 8, 16)


def inputs(n_images: int, n_videos: int) -> tuple[list[bytes], list[bytes]]:
    held = tv.held_out(0)
    pngs = []
    for r in held.renders[:n_images]:
        buf = io.BytesIO()
        shapes.render(*r).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    clips = [shapes.render_video(a, seed=i) for i, a in enumerate(held.combos[:n_videos])]
    return pngs, clips


def random_backbone(size: str, workdir: Path) -> tuple[str, Settings]:
    """A random Qwen2-VL backbone of `size` registered as vlm-shapes is (its entry, its preprocessor
    config) in a registry and model repository under `workdir`: the model's name and the settings."""
    folder = build_random(workdir / "backbone", "qwen2-vl", size=SIZES[size])
    shapes_spec = load_registry().get(MODEL)
    shutil.copy(shapes_spec.source_dir() / "preprocessor_config.json", folder)
    raw = yaml.safe_load(Settings().registry_path.read_text())
    entry = next(dict(m) for m in raw["models"] if m["name"] == MODEL)
    name = f"vlm-random-{size}"
    entry |= {"name": name, "source": {"type": "path", "path": str(folder)}, "dimension": SIZES[size].hidden}
    raw["models"].append(entry)
    registry = workdir / "models.yaml"
    registry.write_text(yaml.safe_dump(raw, sort_keys=False))
    return name, Settings(registry_path=registry, model_repository=workdir / "repository")


class Raw:
    """The gateway's preprocessing and the engine core, in this process."""

    def __init__(self, settings: Settings, model: str) -> None:
        spec = load_registry(settings.registry_path).get(model)
        self.model = VlmModel(spec, settings)
        cfg = self.model.cfg
        self.engine = VlmEngine.load(
            str(spec.source_dir()),
            device="cpu",
            padding_side=spec.padding_side,
            image_mean=cfg.mean,
            image_std=cfg.std,
        )
        self.template = vlm_template(spec, None, Side.document)

    def prepare(self, item: VlmItem) -> Any:
        return self.model.prepare(self.model.prompt(self.template, item), item, "end").item

    def run(self, items: list[VlmItem], batch: int, seconds: float) -> dict[str, float]:
        """Batches of `batch` items, cycling through `items`, for at least `seconds` (a sample as long as
        a few seconds of the served run, not one pass over the list)."""
        prep_s = engine_s = 0.0
        done = 0
        t0 = time.perf_counter()
        while done < len(items) or time.perf_counter() - t0 < seconds:
            chunk = [items[(done + k) % len(items)] for k in range(batch)]
            p0 = time.perf_counter()
            prepared = [self.prepare(x) for x in chunk]
            p1 = time.perf_counter()
            (out,) = self.engine.embed([VlmRequest(*engine_inputs(prepared))])
            assert isinstance(out, np.ndarray)
            engine_s += time.perf_counter() - p1
            prep_s += p1 - p0
            done += batch
        wall = time.perf_counter() - t0
        return {"per_s": done / wall, "preprocess_share": prep_s / (prep_s + engine_s)}

    def best(self, items: list[VlmItem], clients: int, seconds: float) -> dict[str, Any]:
        runs = {b: self.run(items, b, seconds) for b in BATCHES}
        top = max((b for b in runs if b <= clients), key=lambda b: runs[b]["per_s"])
        return {
            "per_s": runs[top]["per_s"],
            "batch": top,
            "preprocess_share": runs[top]["preprocess_share"],
            "by_batch": {str(b): round(r["per_s"], 2) for b, r in runs.items()},
            "best_any_batch_per_s": max(r["per_s"] for r in runs.values()),
        }


def served(
    url: str,
    model: str,
    kind: str,
    payloads: list[str],
    clients: int,
    seconds: float,
    meter: CpuMeter,
    workdir: Path,
) -> dict[str, Any]:
    """`clients` closed-loop clients, one item a request, from bench/loadgen.py in its own process (an
    in-process client pool would take the CPU the served path is measured on)."""
    bodies = workdir / f"{kind}.json"
    bodies.write_text(json.dumps([{"model": model, "inputs": [{kind: p}]} for p in payloads]))
    r = load(url, str(bodies), clients, 1, 10**9, seconds, meter, path="/v1/embed")
    done = int(cast(int, r["ok"]))
    used = cast(dict[str, float], r["cpu_s"])
    return {
        "per_s": done / float(cast(float, r["wall_s"])),
        "errors": int(cast(int, r["requests"])) - done,
        "p50_ms": round(float(cast(float, r["p50_ms"])), 1),
        "cpu_s_per_item": {k: round(v / max(done, 1), 4) for k, v in used.items()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=96)
    p.add_argument("--videos", type=int, default=24)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=15.0, help="each served run")
    p.add_argument("--raw-seconds", type=float, default=3.0, help="each batch size of each raw run")
    p.add_argument("--rounds", type=int, default=2, help="served runs per kind, each between two raw runs")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument(
        "--random-size", choices=sorted(SIZES), default=None, help="a random backbone, not vlm-shapes"
    )
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model, settings = (
            (MODEL, Settings()) if args.random_size is None else random_backbone(args.random_size, work)
        )
        report = measure(args, model, settings, work)
    if args.random_size is not None:
        report["backbone"] = {"random": args.random_size, **asdict(SIZES[args.random_size])}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


def measure(args: argparse.Namespace, model: str, settings: Settings, work: Path) -> dict[str, Any]:
    """Raw and served runs in turns, per kind."""
    torch.set_num_threads(settings.triton_torch_threads)  # the served engine's own setting
    pngs, clips = inputs(args.images, args.videos)
    raw = Raw(settings, model)
    items = {
        "image": [VlmItem(images=(x,)) for x in pngs],
        "video": [VlmItem(video=x) for x in clips],
    }
    payloads = {
        "image": [base64.b64encode(x).decode() for x in pngs],
        "video": [base64.b64encode(x).decode() for x in clips],
    }
    report: dict[str, Any] = {
        "machine": machine(),
        "model": model,
        "clients": args.clients,
        "torch_threads": settings.triton_torch_threads,
        "kinds": {},
    }
    env = {
        "EMBEDFLEET_MODELS": model,
        "EMBEDFLEET_CACHE_BACKEND": "none",
        "EMBEDFLEET_DATA_DIR": "/dev/shm/embedfleet-vlm-bench",
        "EMBEDFLEET_REGISTRY_PATH": str(settings.registry_path),
        "EMBEDFLEET_MODEL_REPOSITORY": str(settings.model_repository),
    }
    with serving(env) as server:
        # the python-backend stub (its process name, truncated: the engine) apart from tritonserver itself
        meter = CpuMeter(
            server.proc.pid, "gateway", {"tritonserver": "tritonserver", "triton_python_b": "engine"}
        )
        for kind, p_list in payloads.items():  # warm up: first calls load kernels
            served(server.url, model, kind, p_list, 2, 3.0, meter, work)
        for kind in items:  # raw, served, raw, ... in turns: each served run against its two neighbours
            raws = [raw.best(items[kind], args.clients, args.raw_seconds)]
            rounds = []
            for _ in range(args.rounds):
                got = served(server.url, model, kind, payloads[kind], args.clients, args.seconds, meter, work)
                raws.append(raw.best(items[kind], args.clients, args.raw_seconds))
                ref = (raws[-2]["per_s"] + raws[-1]["per_s"]) / 2
                best_any = (raws[-2]["best_any_batch_per_s"] + raws[-1]["best_any_batch_per_s"]) / 2
                rounds.append(
                    {
                        **got,
                        "raw_per_s": round(ref, 1),
                        "served_vs_raw": round(got["per_s"] / ref, 3),
                        "served_vs_raw_any_batch": round(got["per_s"] / best_any, 3),
                    }
                )
            ratios = [r["served_vs_raw"] for r in rounds]
            report["kinds"][kind] = {
                "raw": raws,
                "rounds": rounds,
                "served_per_s": round(statistics.fmean(r["per_s"] for r in rounds), 1),
                "served_vs_raw": round(statistics.fmean(ratios), 3),
                "served_vs_raw_range": [min(ratios), max(ratios)],
                "served_vs_raw_any_batch": round(
                    statistics.fmean(r["served_vs_raw_any_batch"] for r in rounds), 3
                ),
            }
            print(kind, json.dumps(report["kinds"][kind]["rounds"]), flush=True)
    report["loadavg_end"] = os.getloadavg()
    return report


if __name__ == "__main__":
    main()
