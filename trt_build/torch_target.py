"""The `torch-cuda` build target: a python-backend Triton entry that runs the HF encoder on a GPU without
TensorRT (trt_build/torch_cuda_model.py), with the same I/O signature as the cpu and TensorRT entries.

Two batching layers meet here: the gateway's token-budget batcher per worker process decides padding and
latency, and Triton's dynamic batcher merges batches from several gateway processes. Its preferred batch
sizes are the CUDA-graph batch buckets and its queue delay is small, so it forms shapes the engine has
graphs for without holding requests back.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from services.registry import Kind, ModelSpec
from trt_build.buckets import BucketSet
from trt_build.model_files import copy_weights, install_model
from trt_build.triton_config import _io_block, _param

MODEL_FILES = ("config.json", "*.safetensors")  # what the engine loads: no tokenizer, no README


@dataclass(frozen=True)
class TorchCudaOptions:
    dtype: str = "float16"  # or bfloat16
    attn_implementation: str = "sdpa"  # or eager
    cuda_graphs: bool = True
    compile_mode: str = "none"  # torch.compile mode; off by default until measured
    instance_count: int = 1  # per GPU
    queue_delay_us: int = 100
    model_dir: str = "torch"  # HF model folder, relative to the version folder
    device: str = "cuda"  # "cpu": eager fp32 on a KIND_CPU instance, to test the entry without a GPU


def buckets_for(spec: ModelSpec) -> BucketSet:
    """Graph buckets from the registry batching block; image towers have one fixed input size."""
    if spec.kind is Kind.image_encoder:
        return BucketSet.from_limits(spec.batching.max_batch_size, 1)
    return BucketSet.from_spec(spec)


def torch_cuda_config(spec: ModelSpec, opts: TorchCudaOptions | None = None) -> str:
    opts = opts or TorchCudaOptions()
    buckets = buckets_for(spec)
    is_image = spec.kind is Kind.image_encoder
    kind = "KIND_GPU" if opts.device == "cuda" else "KIND_CPU"
    params = {
        "model_dir": opts.model_dir,
        "device": opts.device,
        "dtype": opts.dtype,
        "attn_implementation": opts.attn_implementation,
        "cuda_graphs": str(opts.cuda_graphs).lower(),
        "compile": opts.compile_mode,
        "buckets": str(buckets),
        "pooling": spec.pooling,
        "padding_side": spec.padding_side,
        "image_size": spec.image.size if is_image and spec.image else 0,
        # let inputs stay on the GPU when a client sends them there (CUDA shm); gRPC inputs are host memory
        "FORCE_CPU_ONLY_INPUT_TENSORS": "no",
        "registry_version": spec.version,
    }
    parts = [
        f'name: "{spec.triton_name}"',
        'backend: "python"',
        f"max_batch_size: {spec.batching.max_batch_size}",
        "dynamic_batching {\n"
        f"  preferred_batch_size: [ {', '.join(map(str, buckets.batch))} ]\n"
        f"  max_queue_delay_microseconds: {opts.queue_delay_us}\n"
        "}",
        _io_block(spec, ragged=not is_image),
        f"instance_group [\n  {{\n    count: {opts.instance_count}\n    kind: {kind}\n  }}\n]",
        *(_param(k, v) for k, v in params.items()),
    ]
    return "\n".join(parts) + "\n"


def write_torch_cuda_entry(
    spec: ModelSpec, model_root: Path, model_dir: Path, opts: TorchCudaOptions | None = None
) -> Path:
    """config.pbtxt + `<version>/model.py` with its siblings (buckets.py, pooling.py) + the weights the
    engine loads.

    Weights go to the registry's `engines.torch` path (relative to the repository) when it names one, so the
    repository is self-contained (it is mounted into the Triton container). Returns the weights folder.
    """
    opts = opts or TorchCudaOptions()
    version_dir = model_root / spec.version
    version_dir.mkdir(parents=True, exist_ok=True)
    weights = model_root.parent / spec.engines["torch"] if "torch" in spec.engines else version_dir / "torch"
    copy_weights(model_dir, weights, MODEL_FILES)
    rel = os.path.relpath(weights, version_dir)
    if rel != opts.model_dir:
        opts = TorchCudaOptions(**{**opts.__dict__, "model_dir": rel})
    (model_root / "config.pbtxt").write_text(torch_cuda_config(spec, opts))
    install_model("torch_cuda_model.py", version_dir)
    shutil.rmtree(model_root / "configs", ignore_errors=True)
    return weights
