"""`embedfleet build` for vlm models: the Triton entry from the registry (CPU fp32, GPU bf16), idempotent,
a LoRA adapter folder merged into its base at build time, and the checks against the folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from google.protobuf import text_format
from safetensors.torch import load_file
from tritonclient.grpc import model_config_pb2

from services.config import get_settings
from services.registry import Registry, load_registry
from services.vlm import VlmModel
from tests.unit.trt_build.tiny_qwen_vl import backbone_dir, write_adapter
from trt_build.build import build

SHAPES = load_registry().get("vlm-shapes")


def parsed(root: Path) -> tuple[model_config_pb2.ModelConfig, dict[str, str]]:
    cfg = text_format.Parse((root / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    return cfg, {k: v.string_value for k, v in cfg.parameters.items()}


def test_entry_follows_the_registry_and_is_idempotent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = get_settings(model_repository=tmp_path)
    registry = Registry(models=[SHAPES])
    assert not build(registry, "vlm-shapes", settings, "cpu").up_to_date
    cfg, params = parsed(tmp_path / "vlm-shapes")
    assert (
        cfg.backend == "python" and cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    )
    assert (params["device"], params["dtype"], params["padding_side"]) == ("cpu", "float32", "left")
    assert params["max_patches"] == str(SHAPES.batching.max_batch_patches)
    assert params["max_batch_tokens"] == str(SHAPES.batching.max_batch_tokens)
    assert list(cfg.output[0].dims) == [-1, SHAPES.dimension]
    # the engine normalises the uint8 pixels with exactly the numbers the gateway's preprocessing reads
    gateway = VlmModel(SHAPES, settings).cfg
    assert [float(v) for v in params["image_mean"].split(",")] == list(gateway.mean)
    assert [float(v) for v in params["image_std"].split(",")] == list(gateway.std)
    assert (tmp_path / "vlm-shapes" / "1" / "hf" / "model.safetensors").exists()
    assert build(registry, "vlm-shapes", settings, "cpu").up_to_date
    assert "up to date" in capsys.readouterr().out
    assert not build(registry, "vlm-shapes", settings, "gpu").up_to_date  # another target: rebuilt
    cfg, params = parsed(tmp_path / "vlm-shapes")
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert (params["device"], params["dtype"]) == ("cuda", "bfloat16")


def test_a_lora_adapter_folder_is_merged_into_its_base(tmp_path: Path) -> None:
    base = backbone_dir("qwen2-vl")
    weights = load_file(str(base / "model.safetensors"))
    module = "model.layers.0.self_attn.q_proj"
    out_dim, in_dim = weights[module + ".weight"].shape
    gen = torch.Generator().manual_seed(2)
    a, b = torch.randn(4, in_dim, generator=gen), torch.randn(out_dim, 4, generator=gen)
    write_adapter(tmp_path / "adapter", {module: (a, b)}, r=4, alpha=8)
    entry = SHAPES.model_copy(
        update={
            "name": "vlm-lora",
            "dimension": 32,
            "source": SHAPES.source.model_copy(update={"path": str(tmp_path / "adapter"), "base": str(base)}),
        }
    )
    report = build(
        Registry(models=[entry]), "vlm-lora", get_settings(model_repository=tmp_path / "repo"), "cpu"
    )
    assert report.figures["lora_modules"] == 1
    merged = load_file(str(tmp_path / "repo" / "vlm-lora" / "1" / "hf" / "model.safetensors"))
    key = module + ".weight"
    torch.testing.assert_close(merged[key], weights[key] + 2.0 * (b @ a), rtol=1e-5, atol=1e-5)

    no_base = entry.model_copy(update={"source": entry.source.model_copy(update={"base": None})})
    with pytest.raises(ValueError, match="name its base folder"):
        build(Registry(models=[no_base]), "vlm-lora", get_settings(model_repository=tmp_path / "r2"), "cpu")


def test_the_registry_must_fit_the_folder(tmp_path: Path) -> None:
    wrong = SHAPES.model_copy(update={"dimension": 64})
    with pytest.raises(ValueError, match="dimension 64 != hidden size 128"):
        build(
            Registry(models=[wrong]), "vlm-shapes", get_settings(model_repository=tmp_path), "cpu", force=True
        )
    swapped = SHAPES.model_copy(update={"image_placeholder": "<|video_pad|>"})
    with pytest.raises(ValueError, match="is not token"):
        build(
            Registry(models=[swapped]),
            "vlm-shapes",
            get_settings(model_repository=tmp_path),
            "cpu",
            force=True,
        )


def test_a_folder_must_name_its_pixel_mean_and_std(tmp_path: Path) -> None:
    """Without them the gateway would fall back to a family default the engine might not share."""
    import json
    import shutil

    folder = tmp_path / "folder"
    shutil.copytree(SHAPES.source_dir(), folder)
    pre = json.loads((folder / "preprocessor_config.json").read_text())
    del pre["image_std"]
    (folder / "preprocessor_config.json").write_text(json.dumps(pre))
    entry = SHAPES.model_copy(update={"source": SHAPES.source.model_copy(update={"path": str(folder)})})
    with pytest.raises(ValueError, match="must name image_mean and image_std"):
        build(Registry(models=[entry]), "vlm-shapes", get_settings(model_repository=tmp_path / "repo"), "cpu")
