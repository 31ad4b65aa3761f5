"""`embedfleet build` for `vlm` models: the Triton entry of trt_build/vlm_model.py over the model's
Hugging Face folder, a LoRA adapter merged first when the folder holds one (VLM2Vec-V2 ships as a LoRA on
Qwen2-VL-2B-Instruct; vLLM too needs it merged).

There is no export and no parity step: the engine is the transformers backbone itself (a whole-model
ONNX export fails on Qwen2-VL's per-image vision attention), golden-tested against transformers in
tests/unit/trt_build/test_vlm_engine.py. What the build checks is what would otherwise fail only at serving
time: the registry's dimension against the backbone's hidden size, and its placeholders against
config.json's image and video token ids. `--target cpu` writes a KIND_CPU fp32 instance; `gpu` and
`torch-cuda` a KIND_GPU bf16 one (Qwen-VL weights are bf16; fp16 can overflow in their activations).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from services.config import Settings
from services.registry import ModelSpec
from trt_build.buckets import BucketSet
from trt_build.stamps import BUILD_CODE, STAMP, BuildReport, inputs_digest, up_to_date, write_stamp
from trt_build.vlm_model import pixel_stats
from trt_build.vlm_random import merge_lora
from trt_build.vlm_target import VlmOptions, write_vlm_entry

ADAPTER = "adapter_config.json"


def vlm_options(spec: ModelSpec, settings: Settings, target: str) -> VlmOptions:
    """Engine options from the target and the registry (one forward holds a gateway batch's patches)."""
    patches = spec.batching.max_batch_patches
    if target == "cpu":
        return VlmOptions(
            device="cpu",
            dtype="float32",
            instance_count=settings.triton_instance_count,
            threads=settings.triton_torch_threads,
            max_patches=patches,
        )
    graphs = str(BucketSet.from_spec(spec)) if settings.torch_cuda_graphs else ""
    return VlmOptions(device="cuda", dtype="bfloat16", max_patches=patches, graph_buckets=graphs)


def check_backbone(spec: ModelSpec, hf_dir: Path) -> int:
    """The folder's vision patch size (3 x temporal patch x patch^2) after checking it fits the registry."""
    import transformers

    config: Any = transformers.AutoConfig.from_pretrained(hf_dir)
    text = getattr(config, "text_config", config)
    if int(text.hidden_size) != spec.dimension:
        raise ValueError(
            f"{spec.name}: registry dimension {spec.dimension} != hidden size {text.hidden_size}"
        )
    assert spec.tokenizer is not None  # the registry requires it for vlm models
    tokenizer = Tokenizer.from_file(str(spec.model_file(spec.tokenizer)))
    for token, want in (
        (spec.image_placeholder, config.image_token_id),
        (spec.video_placeholder, config.video_token_id),
    ):
        if token and tokenizer.token_to_id(token) != int(want):
            raise ValueError(
                f"{spec.name}: placeholder {token!r} is not token {want} of {hf_dir}/config.json"
            )
    vision = config.vision_config
    return int(getattr(vision, "in_channels", 3) * vision.temporal_patch_size * vision.patch_size**2)


def folder_pixel_stats(spec: ModelSpec) -> tuple[list[float], list[float]]:
    """The folder's `image_mean` / `image_std`, which the engine normalises the served uint8 pixels with.
    Required here, not defaulted: the gateway takes the same file's values (services.media.qwen2vl
    `config_from_hf`) and falls back to a family default only where the file names none, so a folder that
    builds is one where both sides read the same numbers. Published Qwen-VL folders name both."""
    try:
        return pixel_stats(spec.model_file("preprocessor_config.json"))
    except ValueError as exc:
        raise ValueError(f"{spec.name}: {exc}") from exc


def build_vlm(
    spec: ModelSpec, settings: Settings, target: str, force: bool, report: BuildReport
) -> BuildReport:
    """Idempotent like every build: a digest of the folder(s), the build code and the options."""
    source = spec.source_dir()
    adapter = (source / ADAPTER).exists()
    if adapter and spec.source.base is None:
        raise ValueError(f"{spec.name}: {source} holds a LoRA adapter; name its base folder (source.base)")
    opts = vlm_options(spec, settings, target)
    model_root = settings.model_repository / spec.triton_name
    weights = model_root / spec.version / opts.model_dir
    folders = [source, spec.base_dir()] if adapter else [source]
    stamp_inputs = json.dumps(
        {"spec": spec.model_dump(mode="json"), "target": target, "opts": asdict(opts)}, sort_keys=True
    )
    digest = inputs_digest([*folders, *BUILD_CODE], stamp_inputs)
    stamp_path = model_root / STAMP
    if not force and up_to_date(stamp_path, digest, (weights / "config.json").exists(), report):
        return report
    hf_dir = source
    if adapter:
        merged = merge_lora(spec.base_dir(), source, weights)
        report.say(f"merged the LoRA adapter {source} into {spec.base_dir()} ({len(merged)} modules)")
        report.figures["lora_modules"] = len(merged)
        hf_dir = weights
    patch_dim = check_backbone(spec, hf_dir)
    mean, std = folder_pixel_stats(spec)
    write_vlm_entry(spec, model_root, hf_dir, patch_dim, opts, image_mean=mean, image_std=std)
    report.figures.update({"patch_dim": patch_dim, "device": opts.device, "dtype": opts.dtype})
    report.say(f"wrote Triton vlm entry {model_root} ({opts.device}, {opts.dtype}, weights in {weights})")
    write_stamp(stamp_path, digest, report)
    return report
