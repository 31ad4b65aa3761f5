"""CLIP / SigLIP towers: vision and text exported separately to ONNX, each with the pooled, projected
embedding as its output (the vector a dual-tower model compares).

Pretrained weights cannot be downloaded here, so `random-init` registry sources build the real
architecture from its `transformers` config (image size and patch from the registry) with a fixed seed.
The export path and the parity check are the same ones real weights would take.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from services.registry import Kind, ModelSpec
from trt_build.export import INPUT_NAMES, OUTPUT_NAME, export_module
from trt_build.parity import unit_rows

if TYPE_CHECKING:
    import torch

VISION = {"CLIPVisionConfig": "CLIPVisionModelWithProjection", "SiglipVisionConfig": "SiglipVisionModel"}
TEXT = {"CLIPTextConfig": "CLIPTextModelWithProjection", "SiglipTextConfig": "SiglipTextModel"}


def build_tower(
    spec: ModelSpec, overrides: dict[str, Any] | None = None, seed: int = 0
) -> tuple[torch.nn.Module, Any]:
    """The tower wrapped to return [batch, dim] embeddings, and its transformers config."""
    import torch
    import transformers

    from trt_build.pooling import own_embedding

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
            return own_embedding(out)  # the registry's `pooling: none`

    return Tower().eval(), config


def example_inputs(spec: ModelSpec, config: Any, batch: int = 2) -> tuple[torch.Tensor, ...]:
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
    names = ("pixel_values",) if vision else INPUT_NAMES
    figures = export_module(tower, inputs, names, OUTPUT_NAME, out_path, sequence=not vision)
    with torch.no_grad():
        want = tower(*inputs).numpy()
    session = ort.InferenceSession(str(out_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {n: t.numpy() for n, t in zip(names, inputs, strict=True)})[0]
    cos = (unit_rows(got) * unit_rows(want)).sum(1)
    return {
        **figures,
        "max_abs_diff": float(np.abs(got - want).max()),
        "min_cosine": float(cos.min()),
        "dimension": int(got.shape[1]),
    }
