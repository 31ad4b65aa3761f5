"""The vlm engine core against transformers' own forward + VLM2Vec pooling, on tiny random Qwen2-VL,
Qwen2.5-VL and Qwen3-VL backbones (weights at std 1/sqrt(fan_in), so a dropped image would show):
text only, one image, two images, video (Qwen3-VL's with a timestamp before every frame pair), in one
mixed left-padded batch; each row equals the row alone;
a bad request fails alone; `rope_deltas` never leaks; the Triton class end to end with a fake pb_utils;
the random folders and the LoRA merge."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import json_format, text_format
from safetensors.torch import load_file
from tokenizers import Tokenizer
from tritonclient.grpc import model_config_pb2

from services.config import Settings
from services.media import qwen2vl as q
from services.registry import ModelSpec
from tests.unit.trt_build.tiny_qwen_vl import backbone_dir, engine_request, normalized, write_adapter
from trt_build import vlm_model as vm
from trt_build.buckets import BucketSet
from trt_build.vlm_build import vlm_options
from trt_build.vlm_random import FAMILIES, load_lora, merge_lora
from trt_build.vlm_target import VlmOptions, vlm_config, write_vlm_entry

FAMILY_LIST = list(FAMILIES)
MIN_COSINE = 0.99999
PIXELS = {"image_mean": q.CLIP_MEAN, "image_std": q.CLIP_STD}


class Fixture:
    """One family: its folder, the engine, transformers' model and tokenizer, prepared items."""

    def __init__(self, family: str) -> None:
        import transformers

        self.family = family
        self.dir = backbone_dir(family)
        self.cfg = q.PRESETS[family]
        self.tok = Tokenizer.from_file(str(self.dir / "tokenizer.json"))
        cls = getattr(transformers, FAMILIES[family][1])
        self.hf = cls.from_pretrained(self.dir, attn_implementation="sdpa").eval()
        # a copy: the engine swaps the patch embedding for its linear form, the reference keeps HF's conv
        self.engine = vm.VlmEngine(
            copy.deepcopy(self.hf.model),
            device="cpu",
            padding_side="left",
            image_mean=self.cfg.mean,
            image_std=self.cfg.std,
        )
        rng = np.random.default_rng(0)
        self.images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((60, 90, 3), (100, 70, 3))]
        self.frames = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(6)]

    def item(self, text: str, images: list[np.ndarray] = (), video: bool = False) -> q.PreparedItem:
        visuals = [q.prepare_image(i, self.cfg) for i in images]
        if video:  # frames 0.4 s apart: Qwen3-VL writes "<0.2 seconds>", "<1.0 seconds>", ... between them
            visuals.append(q.prepare_video(self.frames, self.cfg, times=[0.4 * k for k in range(6)]))
        text = q.qwen3_video_prompt(text, visuals, self.cfg)
        return q.prepare_item(self.tok.encode(text).ids, visuals, self.cfg)

    def items(self) -> dict[str, q.PreparedItem]:
        out = {
            "text": self.item("Find me an everyday image that matches the given caption: a red square"),
            "image": self.item(
                "<|image_pad|>\nRepresent the given image with the following question: What is this?\n",
                self.images[:1],
            ),
            "two images": self.item(
                "<|image_pad|> Given an image, find a similar one with <|image_pad|> changes", self.images
            ),
        }
        out["video"] = self.item("<|video_pad|> Understand the content of the video.", video=True)
        if self.family == "qwen3-vl":  # its chat template's form, which the processor replaces whole
            out["video, chat form"] = self.item(
                "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>What happens?<|im_end|>\n",
                video=True,
            )
        return out

    def reference(self, item: q.PreparedItem) -> np.ndarray:
        """transformers' forward on the item alone (its own rope code), VLM2Vec's last-token pooling."""
        kw: dict[str, torch.Tensor] = {
            "input_ids": torch.from_numpy(item.input_ids)[None],
            "attention_mask": torch.ones(1, item.lm_tokens, dtype=torch.long),
            "mm_token_type_ids": torch.from_numpy(item.mm_token_type_ids)[None],
        }
        pixels = normalized(item.pixel_values, self.cfg)  # HF's processor output, bit for bit
        parts = np.split(pixels, np.cumsum(item.grid_thw.prod(axis=1))[:-1])
        for kind, pixels_key, grid_key in (
            ("image", "pixel_values", "image_grid_thw"),
            ("video", "pixel_values_videos", "video_grid_thw"),
        ):
            sel = [k == kind for k in item.kinds]
            if any(sel):
                kw[pixels_key] = torch.from_numpy(np.concatenate(list(itertools.compress(parts, sel))))
                kw[grid_key] = torch.from_numpy(item.grid_thw[sel])
        with torch.no_grad():
            hidden = self.hf.model(**kw).last_hidden_state  # post final norm
        return torch.nn.functional.normalize(hidden[0, -1].float(), dim=-1).numpy()


@pytest.fixture(scope="module", params=FAMILY_LIST)
def fx(request) -> Fixture:
    return Fixture(request.param)


def test_mixed_batch_matches_transformers(fx: Fixture) -> None:
    items = fx.items()
    names = list(items)
    # two requests, so rows from both are merged into one left-padded batch of different lengths
    halves = [names[: len(names) // 2], names[len(names) // 2 :]]
    results = fx.engine.embed([engine_request([items[n] for n in half]) for half in halves])
    got = dict(zip(names, np.concatenate(results), strict=True))
    for name, item in items.items():
        assert got[name].shape == (fx.engine.hidden_size,) and got[name].dtype == np.float32
        assert abs(float(np.linalg.norm(got[name])) - 1) < 1e-5
        cos = float(got[name] @ fx.reference(item))
        assert cos >= MIN_COSINE, (fx.family, name, cos)
        alone = fx.engine.embed([engine_request([item])])[0][0]
        assert float(np.abs(alone - got[name]).max()) < 1e-5, (fx.family, name)


@pytest.mark.parametrize("side", ["left", "right"])
def test_the_language_model_padded_to_a_bucket_gives_the_same_vectors(fx: Fixture, side: str) -> None:
    """What the CUDA-graph path runs, eagerly on CPU: the batch padded to a (rows, width) bucket (rows and
    columns of padding after it, whichever side the batch itself is padded on) with the engine's own 4-D
    causal mask; a batch no bucket holds runs unpadded with that mask. Qwen3-VL batches with visuals
    bypass buckets (deepstack inputs)."""
    items = list(fx.items().values())
    requests = [engine_request(items[:2]), engine_request(items[2:])]
    fx.engine.padding_side = side
    try:
        plain = np.concatenate(fx.engine.embed(requests))
    finally:
        fx.engine.padding_side = "left"
    for buckets in (BucketSet((1, 2, 8), (16, 64, 256, 1024)), BucketSet((1,), (16,))):
        engine = vm.VlmEngine(
            copy.deepcopy(fx.hf.model),
            device="cpu",
            padding_side=side,
            buckets=buckets,
            image_mean=fx.cfg.mean,
            image_std=fx.cfg.std,
        )
        assert engine.capture() == 0 and engine.graphs == {}  # graphs are captured on CUDA only
        got = np.concatenate(engine.embed(requests))
        assert float(np.abs(got - plain).max()) < 1e-5, (fx.family, side, str(buckets))


def test_causal_mask_is_what_transformers_builds_for_real_rows() -> None:
    valid = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0]])
    mask = vm.causal_mask(valid)[:, 0]
    assert mask.shape == (2, 4, 4) and mask.dtype == torch.bool
    f, t = False, True
    assert mask[0, 3].tolist() == [f, f, t, t] and mask[0, 2].tolist() == [f, f, t, f]
    assert mask[1, 1].tolist() == [t, t, f, f]
    # padding queries (never pooled) stay finite: one with no real key before it sees itself
    assert mask[0, 0].tolist() == [t, f, f, f] and mask[1, 3].tolist() == [t, t, t, t]


def test_right_padding_gives_the_same_vectors(fx: Fixture) -> None:
    items = list(fx.items().values())
    left = np.concatenate(fx.engine.embed([engine_request(items)]))
    fx.engine.padding_side = "right"
    try:
        right = np.concatenate(fx.engine.embed([engine_request(items)]))
    finally:
        fx.engine.padding_side = "left"
    assert float(np.abs(left - right).max()) < 1e-5


def test_token_budget_splits_the_merged_batch(fx: Fixture, monkeypatch: pytest.MonkeyPatch) -> None:
    items = list(fx.items().values())
    requests = [engine_request([i]) for i in items]
    merged = fx.engine.embed(requests)
    budget = max(i.lm_tokens for i in items)  # the longest item alone fills a batch
    monkeypatch.setattr(fx.engine, "max_batch_tokens", budget)
    chunks = fx.engine._chunks(requests, range(len(requests)))
    assert len(chunks) > 1 and [i for c in chunks for i in c] == list(range(len(requests)))
    assert all(len(c) * max(items[i].lm_tokens for i in c) <= budget for c in chunks)
    for a, b in zip(merged, fx.engine.embed(requests), strict=True):
        assert float(np.abs(a - b).max()) < 1e-5


def test_swapping_the_image_moves_the_vector(fx: Fixture) -> None:
    prompt = "<|image_pad|> Represent the given image."
    a, b = (fx.engine.embed([engine_request([fx.item(prompt, [img])])])[0][0] for img in fx.images)
    assert 1 - float(a @ b) > 1e-3  # HF's std-0.02 init would leave this near 1e-5


def test_the_engine_embeds_patches_with_one_matmul_equal_to_the_conv(fx: Fixture) -> None:
    assert isinstance(fx.engine.model.visual.patch_embed, vm.LinearPatchEmbed)
    assert not isinstance(fx.hf.model.visual.patch_embed, vm.LinearPatchEmbed)  # the reference's own
    for bias in (False, True):  # Qwen2/2.5-VL have none, Qwen3-VL has one
        conv = torch.nn.Conv3d(3, 16, kernel_size=(2, 14, 14), stride=(2, 14, 14), bias=bias)
        pixels = torch.randn(37, 3 * 2 * 14 * 14)
        with torch.no_grad():
            want = conv(pixels.view(-1, 3, 2, 14, 14)).view(-1, 16)
            got = vm.LinearPatchEmbed(conv)(pixels)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    padded = types.SimpleNamespace(patch_embed=types.SimpleNamespace(proj=torch.nn.Conv3d(3, 4, 2, 2, 1)))
    assert not vm.linear_patch_embed(padded)  # a conv that is no per-patch linear map stays as it is


def test_rope_deltas_cannot_leak(fx: Fixture) -> None:
    item = fx.items()["image"]
    clean = fx.engine.embed([engine_request([item])])[0]
    fx.engine.model.rope_deltas = torch.tensor([[1234]])  # what a generate() call would leave behind
    after = fx.engine.embed([engine_request([item])])[0]
    assert fx.engine.model.rope_deltas is None
    np.testing.assert_array_equal(clean, after)


def test_a_bad_request_fails_alone(fx: Fixture, monkeypatch: pytest.MonkeyPatch) -> None:
    items = fx.items()
    good = engine_request([items["text"], items["image"]])
    bad_grid = dataclasses.replace(
        engine_request([items["image"]]), grid_thw=engine_request([items["image"]]).grid_thw * 2
    )
    bad_sum = dataclasses.replace(good, lengths=good.lengths + 1)
    results = fx.engine.embed([good, bad_grid, bad_sum])
    assert isinstance(results[0], np.ndarray) and results[0].shape[0] == 2
    assert isinstance(results[1], ValueError) and "pixel_values" in str(results[1])
    assert isinstance(results[2], ValueError) and "sum" in str(results[2])
    # a request that breaks the merged run (here: any batch holding its marker token) fails alone too
    poison = engine_request([fx.item("poison poison poison")])
    marker = int(poison.input_ids[0])
    forward = fx.engine.forward

    def fragile(batch: vm.Batch) -> torch.Tensor:
        if bool((batch.input_ids == marker).any()):
            raise RuntimeError("CUDA out of memory (simulated)")
        return forward(batch)

    monkeypatch.setattr(fx.engine, "forward", fragile)
    results = fx.engine.embed([good, poison])
    assert isinstance(results[0], np.ndarray) and isinstance(results[1], RuntimeError)


def test_parse_request_strips_the_batch_dim() -> None:
    arrays = {
        "input_ids": np.array([[1, 2, 3]]),
        "item_lengths": np.array([[3]]),
        "position_ids": np.zeros((1, 3, 3), np.int64),
        "pixel_values": None,
        "grid_thw": None,
    }
    req = vm.parse_request(arrays, 1176)
    assert req.input_ids.tolist() == [1, 2, 3] and req.pixel_values.shape == (0, 1176)
    with pytest.raises(ValueError, match="together"):
        vm.parse_request({**arrays, "grid_thw": np.ones((1, 1, 3), np.int64)}, 1176)
    with pytest.raises(ValueError, match="batch dim 1"):
        vm.parse_request({**arrays, "input_ids": np.ones((2, 3), np.int64)}, 1176)
    grids = np.ones((1, 1, 3), np.int64)
    floats = np.zeros((1, 1, 1176), np.float32)  # the pre-uint8 contract: refused, never cast
    with pytest.raises(ValueError, match="uint8"):
        vm.parse_request({**arrays, "pixel_values": floats, "grid_thw": grids}, 1176)
    req = vm.parse_request({**arrays, "pixel_values": floats.astype(np.uint8), "grid_thw": grids}, 1176)
    assert req.pixel_values.dtype == np.uint8 and req.pixel_values.shape == (1, 1176)


def test_normalize_pixels_is_hf_rescale_then_normalize() -> None:
    """float64 rescale, float32 cast, float32 normalise per channel (channel-major patch columns)."""
    rng = np.random.default_rng(5)
    patches = rng.integers(0, 256, (7, 1176), dtype=np.uint8)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    cpu = torch.device("cpu")
    got = vm.normalize_pixels(
        torch.from_numpy(patches), *(vm.column_stats(v, 1176, cpu) for v in (mean, std))
    )
    x = (patches.reshape(7, 3, 392).astype(np.float64) * (1 / 255)).astype(np.float32)
    want = (x - np.float32(mean)[:, None]) / np.float32(std)[:, None]
    assert got.dtype == torch.float32
    np.testing.assert_array_equal(got.numpy(), want.reshape(7, 1176))
    with pytest.raises(ValueError, match="3 channel"):
        vm.column_stats((0.5, 0.5), 1176, cpu)


class FakeTensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self.name, self.array = name, array

    def as_numpy(self) -> np.ndarray:
        return self.array


def fake_pb_utils() -> types.ModuleType:
    pb = types.ModuleType("triton_python_backend_utils")
    pb.Tensor = FakeTensor
    pb.TritonError = lambda message: message
    pb.InferenceResponse = lambda output_tensors, error=None: types.SimpleNamespace(
        output_tensors=output_tensors, error=error
    )
    pb.get_input_tensor_by_name = lambda req, name: (
        FakeTensor(name, req[name]) if req.get(name) is not None else None
    )
    return pb


def tiny_spec() -> ModelSpec:
    return ModelSpec(
        name="vlm-tiny",
        modality="multimodal",
        kind="vlm",
        source={"type": "path", "path": "unused"},
        dimension=32,
        pooling="last-token",
        padding_side="left",
        image_placeholder="<|image_pad|>",
        max_seq_length=4096,
        batching={"max_batch_tokens": 8192},
    )


def test_triton_config(tmp_path: Path) -> None:
    text = vlm_config(tiny_spec(), 1176, **PIXELS)
    assert text == vlm_config(tiny_spec(), 1176, **PIXELS), "generation must be deterministic"
    cfg = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert cfg.backend == "python" and cfg.max_batch_size == VlmOptions().max_requests
    assert [i.name for i in cfg.input] == list(vm.INPUT_NAMES)
    assert all(i.allow_ragged_batch for i in cfg.input)
    assert [i.name for i in cfg.input if i.optional] == list(vm.OPTIONAL_INPUTS)
    assert list(cfg.input[3].dims) == [-1, 1176] and list(cfg.input[2].dims) == [3, -1]
    assert list(cfg.output[0].dims) == [-1, 32] and cfg.output[0].name == vm.OUTPUT_NAME
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert params["padding_side"] == "left" and params["max_batch_tokens"] == "8192"
    assert params["threads"] == "1"
    assert [float(v) for v in params["image_mean"].split(",")] == list(q.CLIP_MEAN)  # exact round trip
    assert [float(v) for v in params["image_std"].split(",")] == list(q.CLIP_STD)
    assert cfg.input[3].data_type == model_config_pb2.TYPE_UINT8
    threaded = text_format.Parse(
        vlm_config(tiny_spec(), 1176, VlmOptions(threads=4), **PIXELS), model_config_pb2.ModelConfig()
    )
    assert threaded.parameters["threads"].string_value == "4"
    assert "cuda_graphs" not in params and "buckets" not in params
    graphed = text_format.Parse(
        vlm_config(tiny_spec(), 1176, VlmOptions(graph_buckets="1,2|16,32|64"), **PIXELS),
        model_config_pb2.ModelConfig(),
    )
    assert graphed.parameters["cuda_graphs"].string_value == "true"
    assert BucketSet.parse(graphed.parameters["buckets"].string_value) == BucketSet((1, 2), (16, 32), 64)


def test_the_gpu_target_captures_graphs_over_the_registry_buckets() -> None:
    spec = tiny_spec()
    gpu = vlm_options(spec, Settings(), "gpu")
    assert gpu.graph_buckets and BucketSet.parse(gpu.graph_buckets) == BucketSet.from_spec(spec)
    assert vlm_options(spec, Settings(torch_cuda_graphs=False), "gpu").graph_buckets == ""
    assert vlm_options(spec, Settings(), "cpu").graph_buckets == ""  # eager on CPU: padding would cost


def test_triton_model_end_to_end(fx: Fixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The entry `write_vlm_entry` lays out, loaded as Triton would (config as JSON), fake pb_utils."""
    if fx.family != "qwen2-vl":
        pytest.skip("one family is enough for the Triton wrapper")
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake_pb_utils())
    root = tmp_path / "vlm-tiny"
    # a mean and std of its own: the engine must take them from config.pbtxt, not the folder
    pixels = {"image_mean": (0.3, 0.4, 0.5), "image_std": (0.2, 0.25, 0.3)}
    # bucket parameters as the gpu target writes them: parsed, the padded path run (no graphs off CUDA)
    opts = VlmOptions(device="cpu", threads=3, graph_buckets="1,2,4|16,64,256|")
    weights = write_vlm_entry(tiny_spec(), root, fx.dir, 1176, opts, **pixels)
    threads: list[int] = []  # what the stub would set in its own process, not in this one
    monkeypatch.setattr(vm.torch, "set_num_threads", threads.append)
    assert sorted(p.name for p in weights.iterdir()) == ["config.json", "model.safetensors"]
    assert (root / "1" / "model.py").read_text() == Path(vm.__file__).read_text()
    assert (root / "1" / "pooling.py").read_text() == Path(vm.__file__).with_name("pooling.py").read_text()
    config = text_format.Parse((root / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    model = vm.TritonPythonModel()
    model.initialize(
        {
            "model_config": json.dumps(json_format.MessageToDict(config, preserving_proto_field_name=True)),
            "model_repository": str(root),
            "model_version": "1",
        }
    )
    assert threads == [3]
    assert model.engine.buckets == BucketSet((1, 2, 4), (16, 64, 256)) and model.engine.graphs == {}
    items = fx.items()
    req = engine_request([items["text"], items["image"]])
    good = {
        "input_ids": req.input_ids[None],
        "item_lengths": req.lengths[None],
        "position_ids": req.position_ids[None],
        "pixel_values": req.pixel_values[None],
        "grid_thw": req.grid_thw[None],
    }
    text_only = engine_request([items["text"]])
    plain = {"input_ids": text_only.input_ids[None], "item_lengths": text_only.lengths[None]}
    plain["position_ids"] = text_only.position_ids[None]
    broken = {**good, "grid_thw": None}
    responses = model.execute([good, broken, plain])
    out = responses[0].output_tensors[0]
    assert responses[0].error is None and out.name == "embeddings" and out.array.shape == (1, 2, 32)
    own = vm.VlmEngine(copy.deepcopy(fx.hf.model), device="cpu", padding_side="left", **pixels)
    np.testing.assert_allclose(out.array[0], np.concatenate(own.embed([req])), atol=1e-5)
    folder_norm = np.concatenate(fx.engine.embed([req]))  # the folder's CLIP mean/std: the image row moves
    np.testing.assert_allclose(out.array[0][0], folder_norm[0], atol=1e-5)
    assert float(np.abs(out.array[0][1] - folder_norm[1]).max()) > 1e-3
    assert responses[1].output_tensors == [] and "together" in responses[1].error
    assert responses[2].error is None and responses[2].output_tensors[0].array.shape == (1, 1, 32)


def test_random_folder_layout_and_scale(fx: Fixture) -> None:
    names = {p.name for p in fx.dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"} <= names
    pre = json.loads((fx.dir / "preprocessor_config.json").read_text())
    assert (pre["patch_size"], pre["merge_size"]) == (fx.cfg.patch_size, fx.cfg.merge_size)
    assert tuple(pre["image_mean"]) == pytest.approx(fx.cfg.mean)
    weights = load_file(str(fx.dir / "model.safetensors"))
    big = {k: v for k, v in weights.items() if v.dim() == 2 and "embed" not in k and v.shape[1] >= 32}
    for key, w in big.items():
        assert float(w.std()) == pytest.approx(1 / np.sqrt(w.shape[1]), rel=0.35), key


def test_lora_merge_matches_manual_computation(tmp_path: Path) -> None:
    base = backbone_dir("qwen2-vl")
    weights = load_file(str(base / "model.safetensors"))
    gen = torch.Generator().manual_seed(1)
    r, alpha = 4, 8
    # Adapters name modules as transformers 4 did (text layers at model.layers, the tower at visual),
    # which is also how transformers 5 writes checkpoints; in memory, 5 nests them differently.
    targets = {
        "model.layers.0.self_attn.q_proj": "model.language_model.layers.0.self_attn.q_proj",
        "visual.blocks.1.attn.qkv": "model.visual.blocks.1.attn.qkv",
    }
    pairs = {}
    for module in targets:
        out_dim, in_dim = weights[module + ".weight"].shape
        pairs[module] = (torch.randn(r, in_dim, generator=gen), torch.randn(out_dim, r, generator=gen))
    write_adapter(tmp_path / "adapter", pairs, r, alpha)
    assert load_lora(tmp_path / "adapter").scale == alpha / r
    merged = merge_lora(base, tmp_path / "adapter", tmp_path / "merged")
    assert sorted(merged) == sorted(targets.values())
    after = load_file(str(tmp_path / "merged" / "model.safetensors"))
    assert after.keys() == weights.keys()
    for module in targets:
        a, b = pairs[module]
        key = module + ".weight"
        torch.testing.assert_close(after[key], weights[key] + (alpha / r) * (b @ a), rtol=1e-5, atol=1e-5)
    untouched = "model.layers.1.self_attn.q_proj.weight"
    torch.testing.assert_close(after[untouched], weights[untouched], rtol=0, atol=0)
    assert (tmp_path / "merged" / "tokenizer.json").exists()

    write_adapter(tmp_path / "stray", {"model.layers.9.self_attn.q_proj": pairs[next(iter(pairs))]}, r, alpha)
    with pytest.raises(KeyError, match="matches no module"):
        merge_lora(base, tmp_path / "stray", tmp_path / "never")
