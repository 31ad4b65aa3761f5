"""CLIP and SigLIP towers of the real architectures (random weights: none can be downloaded here):
each exports separately to ONNX with a dynamic batch and matches torch. Depth is cut to 2 layers in the
test to keep CI fast; `embedfleet build` exports the registry's full configs the same way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from services.registry import Kind, load_registry
from trt_build.towers import build_tower, export_tower

TOWERS = ["clip-vit-b16-vision", "clip-vit-b16-text", "siglip-base-p16-vision", "siglip-base-p16-text"]
SHALLOW = {"num_hidden_layers": 2}


@pytest.mark.parametrize("name", TOWERS)
def test_tower_exports_with_parity(name: str, tmp_path: Path) -> None:
    spec = load_registry().get(name)
    out = tmp_path / "model.onnx"
    figures = export_tower(spec, out, SHALLOW)
    assert figures["min_cosine"] >= 0.9999 and figures["max_abs_diff"] < 1e-3, figures
    assert figures["dimension"] == spec.dimension
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    if spec.kind is Kind.image_encoder:
        assert names == ["pixel_values"]
        assert spec.image is not None
        x = (
            np.random.default_rng(0)
            .standard_normal((3, 3, spec.image.size, spec.image.size))
            .astype(np.float32)
        )
        assert session.run(None, {"pixel_values": x})[0].shape == (3, spec.dimension)
    else:
        assert names == ["input_ids", "attention_mask"]
        ids = np.ones((5, 7), dtype=np.int64)
        assert session.run(None, {"input_ids": ids, "attention_mask": ids})[0].shape == (5, spec.dimension)


def test_image_size_and_patch_come_from_the_registry() -> None:
    spec = load_registry().get("clip-vit-b16-vision")
    _, config = build_tower(spec, SHALLOW)
    assert (config.image_size, config.patch_size) == (224, 16)
    assert (config.image_size // config.patch_size) ** 2 == 196


def test_dual_tower_names_both_towers() -> None:
    spec = load_registry().get("clip-vit-b16")
    assert spec.towers == {"text": "clip-vit-b16-text", "image": "clip-vit-b16-vision"}
