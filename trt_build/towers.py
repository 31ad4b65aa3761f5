"""CLIP / SigLIP towers: vision and text exported separately to ONNX, each with the pooled, projected
embedding as its output (the vector a dual-tower model compares).

Pretrained weights cannot be downloaded here, so `random-init` registry sources build the real
architecture from its `transformers` config (image size and patch from the registry) with a fixed seed.
The export path and the parity check are the same ones real weights would take.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from services.registry import Kind, ModelSpec

VISION = {"CLIPVisionConfig": "CLIPVisionModelWithProjection", "SiglipVisionConfig": "SiglipVisionModel"}
TEXT = {"CLIPTextConfig": "CLIPTextModelWithProjection", "SiglipTextConfig": "SiglipTextModel"}


def build_tower(spec: ModelSpec, overrides: dict[str, Any] | None = None, seed: int = 0):  # type: ignore[no-untyped-def]
    """The tower wrapped to return [batch, dim] embeddings, from the registry's config."""
    import torch
    import transformers

    arch = spec.source.architecture or ""
    classes = VISION if spec.kind is Kind.image_encoder else TEXT
    if arch not in classes:
        raise ValueError(f"{spec.name}: unsupported tower architecture {arch!r} (known: {sorted(classes)})")
    config = getattr(transformers, arch)(**{**spec.source.config, **(overrides or {})})
    if spec.kind is Kind.image_encoder and spec.image is not None:
        config.image_size = spec.image.size
        if spec.image.patch:
            config.patch_size = spec.image.patch
    torch.manual_seed(seed)
    model = getattr(transformers, classes[arch])(config).eval()

    class Tower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            if spec.kind is Kind.image_encoder:
                out = self.model(pixel_values=inputs[0])
            else:
                out = self.model(input_ids=inputs[0], attention_mask=inputs[1])
            pooled = getattr(out, "image_embeds", None)
            if pooled is None:
                pooled = getattr(out, "text_embeds", None)
            return out.pooler_output if pooled is None else pooled

    return Tower().eval(), config


def example_inputs(spec: ModelSpec, config: Any, batch: int = 2):  # type: ignore[no-untyped-def]
    import torch

    g = torch.Generator().manual_seed(1)
    if spec.kind is Kind.image_encoder:
        size = config.image_size
        return (torch.randn(batch, 3, size, size, generator=g),)
    seq = min(16, config.max_position_embeddings)
    ids = torch.randint(1, config.vocab_size, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    if spec.source.architecture != "SiglipTextConfig":  # SigLIP pools the last position: no padding there
        mask[-1, seq // 2 :] = 0
    return ids, mask


def export_tower(
    spec: ModelSpec, out_path: Path, overrides: dict[str, Any] | None = None
) -> dict[str, float]:
    """Export with a dynamic batch axis (and sequence axis for text) and check ORT against torch."""
    import onnxruntime as ort
    import torch

    tower, config = build_tower(spec, overrides)
    inputs = example_inputs(spec, config)
    vision = spec.kind is Kind.image_encoder
    names = ["pixel_values"] if vision else ["input_ids", "attention_mask"]
    axes: dict[str, dict[int, str]] = {n: {0: "batch"} for n in names}
    if not vision:
        for n in names:
            axes[n][1] = "sequence"
    axes["embeddings"] = {0: "batch"}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with torch.no_grad():
        torch.onnx.export(
            tower,
            inputs,
            str(out_path),
            input_names=names,
            output_names=["embeddings"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
        want = tower(*inputs).numpy()
    export_s = time.perf_counter() - started
    session = ort.InferenceSession(str(out_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {n: t.numpy() for n, t in zip(names, inputs, strict=True)})[0]
    cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    return {
        "export_s": export_s,
        "max_abs_diff": float(np.abs(got - want).max()),
        "min_cosine": float(cos.min()),
        "dimension": int(got.shape[1]),
        "onnx_mb": out_path.stat().st_size / 1e6,
    }
