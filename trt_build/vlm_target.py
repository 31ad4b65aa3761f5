"""The `vlm` build target: a python-backend Triton entry running trt_build/vlm_model.py over an HF folder.

The I/O contract is the one in vlm_model.py's docstring; this module only writes it down as config.pbtxt
(hand-written text, byte-stable like triton_config.py) and lays out `<model>/<version>/model.py` plus
the weights folder. One Triton request is one group of items, so `max_batch_size` counts requests that
Triton's dynamic batcher may merge; the engine then re-splits them under `max_batch_tokens`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from services.registry import ModelSpec
from trt_build.model_files import copy_weights, install_model

MODEL_FILES = ("config.json", "*.safetensors", "*.safetensors.index.json")


@dataclass(frozen=True)
class VlmOptions:
    device: str = "cuda"  # "cpu": eager fp32 on a KIND_CPU instance (tests, CPU-only nodes)
    dtype: str = "bfloat16"
    attn_implementation: str = "sdpa"
    instance_count: int = 1
    threads: int = 1  # torch intra-op threads of a CPU instance (ignored on CUDA)
    max_requests: int = 8  # Triton max_batch_size: item groups merged into one execute
    queue_delay_us: int = 500
    max_patches: int = 1 << 17  # vision patches per forward (~32 1-megapixel images)
    model_dir: str = "hf"  # relative to the version folder
    # CUDA graphs of the language model over these (rows, width) buckets (BucketSet text); "" for none
    graph_buckets: str = ""


def _input(name: str, dtype: str, dims: str, optional: bool = False) -> str:
    extra = "\n    optional: true" if optional else ""
    return (
        f'  {{\n    name: "{name}"\n    data_type: {dtype}\n    dims: [ {dims} ]\n'
        f"    allow_ragged_batch: true{extra}\n  }}"
    )


def vlm_config(
    spec: ModelSpec,
    patch_dim: int,
    opts: VlmOptions | None = None,
    *,
    image_mean: Sequence[float],
    image_std: Sequence[float],
) -> str:
    """config.pbtxt text for a vlm entry; `patch_dim` = 3 x temporal patch x patch^2 (1176 for Qwen2-VL).
    `image_mean`/`image_std`: what the engine normalises the served uint8 pixels with, the model folder's
    own values, which the gateway's preprocessing reads too (trt_build/vlm_build.py)."""
    opts = opts or VlmOptions()
    kind = "KIND_GPU" if opts.device == "cuda" else "KIND_CPU"
    inputs = [
        _input("input_ids", "TYPE_INT64", "-1"),
        _input("item_lengths", "TYPE_INT64", "-1"),
        _input("position_ids", "TYPE_INT64", "3, -1"),
        _input("pixel_values", "TYPE_UINT8", f"-1, {patch_dim}", optional=True),
        _input("grid_thw", "TYPE_INT64", "-1, 3", optional=True),
    ]
    params = {
        "model_dir": opts.model_dir,
        "device": opts.device,
        "dtype": opts.dtype,
        "attn_implementation": opts.attn_implementation,
        "padding_side": spec.padding_side,
        "max_seq_length": spec.max_seq_length,
        "max_batch_tokens": spec.batching.max_batch_tokens,
        "max_patches": opts.max_patches,
        "threads": opts.threads,
        "image_mean": ",".join(repr(float(v)) for v in image_mean),
        "image_std": ",".join(repr(float(v)) for v in image_std),
        "registry_version": spec.version,
    }
    if opts.graph_buckets:
        params.update({"cuda_graphs": "true", "buckets": opts.graph_buckets})
    parts = [
        f'name: "{spec.triton_name}"',
        'backend: "python"',
        f"max_batch_size: {opts.max_requests}",
        f"dynamic_batching {{\n  max_queue_delay_microseconds: {opts.queue_delay_us}\n}}",
        "input [\n" + ",\n".join(inputs) + "\n]",
        f'output [\n  {{\n    name: "embeddings"\n    data_type: TYPE_FP32\n'
        f"    dims: [ -1, {spec.dimension} ]\n  }}\n]",
        f"instance_group [\n  {{\n    count: {opts.instance_count}\n    kind: {kind}\n  }}\n]",
        *(f'parameters: {{\n  key: "{k}"\n  value: {{ string_value: "{v}" }}\n}}' for k, v in params.items()),
    ]
    return "\n".join(parts) + "\n"


def write_vlm_entry(
    spec: ModelSpec,
    model_root: Path,
    hf_dir: Path,
    patch_dim: int,
    opts: VlmOptions | None = None,
    *,
    image_mean: Sequence[float],
    image_std: Sequence[float],
) -> Path:
    """config.pbtxt + `<version>/model.py` (= vlm_model.py, with its siblings) + the weights under
    `<version>/<model_dir>`.

    Only what the engine loads is copied (config and safetensors); the tokenizer and preprocessor config
    stay with the gateway. Returns the weights folder."""
    opts = opts or VlmOptions()
    version_dir = model_root / spec.version
    weights = version_dir / opts.model_dir
    copy_weights(hf_dir, weights, MODEL_FILES)
    config = vlm_config(spec, patch_dim, opts, image_mean=image_mean, image_std=image_std)
    (model_root / "config.pbtxt").write_text(config)
    install_model("vlm_model.py", version_dir)
    return weights
