"""Qwen2-VL numpy preprocessing against transformers 5.24 (PIL-backend processor, the pinned reference):
identical grids, ids, mm_token_type_ids and M-RoPE positions, pixels equal; video patch order and frame
sampling against the video processor's own methods; costs the batcher reads without touching pixels;
Qwen3-VL-Embedding's image resize against qwen-vl-utils."""

from __future__ import annotations

from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from services.errors import InvalidInput, Unprocessable
from services.media import qwen2vl as q
from tests.unit.trt_build.tiny_qwen_vl import hf_method, hf_processor, normalized, rope_model, tokenizer_dir

CFG = q.QwenVLConfig()
PROMPT = "<|image_pad|>\nRepresent the given image with the following question: What is this?\n"
VIDEO_MODULE = "models.qwen2_vl.video_processing_qwen2_vl"


@pytest.fixture(scope="module")
def processor():
    return hf_processor(CFG.min_pixels, CFG.max_pixels)


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer_dir() / "tokenizer.json"))


def picture(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """Uniform noise: every resampling or rounding difference shows."""
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")
    if mode == "RGBA":
        alpha = Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8), "L")
        img = img.convert("RGBA")
        img.putalpha(alpha)
    return img


def hf_positions(family: str, ids: np.ndarray, types: np.ndarray, **grids: np.ndarray | None) -> np.ndarray:
    model = rope_model(family)
    tensors = {k: torch.from_numpy(v) for k, v in grids.items() if v is not None}
    with torch.no_grad():
        pos, _ = model.get_rope_index(
            torch.from_numpy(ids)[None], mm_token_type_ids=torch.from_numpy(types)[None], **tensors
        )
    return pos[:, 0].numpy()


def vlm2vec_input(img: Image.Image) -> Image.Image:
    """What VLM2Vec hands the processor: images with a side under 28 px squashed to 56 x 56 first."""
    return img.resize((56, 56)) if min(img.size) < 28 else img


@pytest.mark.parametrize(
    ("width", "height", "mode"),
    [
        (4000, 3000, "RGB"),  # a phone photo: downscaled under max_pixels, never refused
        (20, 20, "RGB"),  # both sides under 28: VLM2Vec's 56 x 56
        (300, 27, "RGB"),  # one side under 28
        (457, 300, "RGB"),  # no side a multiple of 28
        (30, 40, "RGB"),  # under min_pixels: scaled up
        (56, 56, "RGB"),  # already on the grid
        (640, 480, "RGBA"),  # transparency composited onto white, as HF does
    ],
)
def test_image_matches_hf_processor(processor, tokenizer, width: int, height: int, mode: str) -> None:
    img = picture(width, height, mode=mode)
    want = processor(text=[PROMPT], images=[vlm2vec_input(img)], return_tensors="np")
    vis = q.prepare_image(img, CFG)
    item = q.prepare_item(tokenizer.encode(PROMPT).ids, [vis], CFG)
    assert [list(vis.grid_thw)] == want["image_grid_thw"].tolist()
    assert item.input_ids.tolist() == want["input_ids"][0].tolist()
    assert item.mm_token_type_ids.tolist() == want["mm_token_type_ids"][0].tolist()
    assert vis.pixel_values.shape == want["pixel_values"].shape
    assert vis.pixel_values.dtype == np.uint8  # the engine rescales and normalises: bit-identical to HF
    np.testing.assert_array_equal(normalized(vis.pixel_values, CFG), want["pixel_values"])
    pos = hf_positions("qwen2-vl", item.input_ids, item.mm_token_type_ids, image_grid_thw=item.grid_thw)
    np.testing.assert_array_equal(item.position_ids, pos)
    assert item.rope_delta == int(pos.max()) + 1 - item.lm_tokens
    _, gh, gw = vis.grid_thw
    assert CFG.min_pixels <= gh * gw * 14 * 14 <= CFG.max_pixels
    assert q.image_grid(height, width, CFG) == vis.grid_thw  # the batcher's cost needs no pixels
    assert q.item_cost(len(tokenizer.encode(PROMPT).ids), [("image", vis.grid_thw)], CFG) == (
        item.lm_tokens,
        item.vision_patches,
    )


def test_two_images_in_one_item(processor, tokenizer) -> None:
    text = "<|image_pad|> is the reference; find <|image_pad|> with the described changes: make it blue"
    imgs = [picture(333, 222, seed=1), picture(100, 180, seed=2)]
    want = processor(text=[text], images=imgs, return_tensors="np")
    visuals = [q.prepare_image(i, CFG) for i in imgs]
    item = q.prepare_item(tokenizer.encode(text).ids, visuals, CFG)
    assert item.grid_thw.tolist() == want["image_grid_thw"].tolist()
    assert item.input_ids.tolist() == want["input_ids"][0].tolist()
    assert item.mm_token_type_ids.tolist() == want["mm_token_type_ids"][0].tolist()
    np.testing.assert_array_equal(normalized(item.pixel_values, CFG), want["pixel_values"])
    pos = hf_positions("qwen2-vl", item.input_ids, item.mm_token_type_ids, image_grid_thw=item.grid_thw)
    np.testing.assert_array_equal(item.position_ids, pos)


def test_documented_costs() -> None:
    """vlm-engine.md: 640 x 480 is 391 visual tokens from 1,564 patches; 1920 x 1080 is 1,222 tokens."""
    assert q.image_grid(480, 640, CFG) == (1, 34, 46)
    assert q.grid_tokens((1, 34, 46), CFG) == 391 and q.grid_patches((1, 34, 46)) == 1564
    assert q.grid_tokens(q.image_grid(1080, 1920, CFG), CFG) == 1222


def test_video_patch_order_matches_hf_video_processor() -> None:
    hf_patchify = hf_method(VIDEO_MODULE, "Qwen2VLVideoProcessor", "patchify")
    rng = np.random.default_rng(3)
    frames = rng.standard_normal((5, 3, 56, 84)).astype(np.float32)  # odd: HF repeats the last frame
    want, *grid = hf_patchify(None, torch.from_numpy(frames)[None], 14, 2, 2)
    padded = np.concatenate([frames, frames[-1:]])
    got, got_grid = q.patchify(padded, CFG)
    assert got_grid == tuple(grid) == (3, 4, 6)
    np.testing.assert_array_equal(got, want[0].numpy())


@pytest.mark.parametrize(("total", "wanted"), [(100, 8), (37, 8), (9, 8), (64, 4), (30, 7)])
def test_frame_sampling_matches_hf(total: int, wanted: int) -> None:
    sample = hf_method(VIDEO_MODULE, "Qwen2VLVideoProcessor", "sample_frames")

    meta = SimpleNamespace(total_num_frames=total, fps=25.0)
    defaults = SimpleNamespace(fps=None, num_frames=None)  # the processor's own defaults: neither set
    want = sample(defaults, meta, temporal_patch_size=2, min_frames=4, max_frames=768, num_frames=wanted)
    assert q.sample_indices(total, wanted, 2) == want.tolist()


def test_video_item(tokenizer) -> None:
    rng = np.random.default_rng(4)
    frames = [rng.integers(0, 256, (90, 120, 3), dtype=np.uint8) for _ in range(30)]
    vis = q.prepare_video(frames, CFG, duration_s=3.0)
    assert vis.kind == "video" and vis.grid_thw == q.video_grid(30, 90, 120, CFG) == (4, 6, 8)
    assert vis.seconds_per_grid == pytest.approx(2 / (8 / 3.0))
    # each sampled frame is processed exactly like a still image of that size (PIL bicubic)
    idx = q.sample_indices(30, 8, 2)
    first = q.prepare_image(Image.fromarray(frames[idx[0]]).resize((112, 84), Image.Resampling.BICUBIC), CFG)
    got = vis.pixel_values[:48].reshape(48, 3, 2, 14, 14)[:, :, 0]
    np.testing.assert_array_equal(got, first.pixel_values.reshape(48, 3, 2, 14, 14)[:, :, 0])
    text = "<|video_pad|> Understand the content of the provided video."
    item = q.prepare_item(tokenizer.encode(text).ids, [vis], CFG)
    # the processor's way: expand the placeholder string, then tokenize
    expanded = text.replace("<|video_pad|>", "<|video_pad|>" * vis.n_tokens)
    assert item.input_ids.tolist() == tokenizer.encode(expanded).ids
    assert int((item.mm_token_type_ids == 2).sum()) == vis.n_tokens == 48
    pos = hf_positions("qwen2-vl", item.input_ids, item.mm_token_type_ids, video_grid_thw=item.grid_thw)
    np.testing.assert_array_equal(item.position_ids, pos)
    assert q.item_cost(len(tokenizer.encode(text).ids), [("video", vis.grid_thw)], CFG) == (
        item.lm_tokens,
        item.vision_patches,
    )


def test_qwen25_video_positions_follow_seconds_per_grid(tokenizer) -> None:
    cfg = q.PRESETS["qwen2.5-vl"]
    rng = np.random.default_rng(5)
    frames = [rng.integers(0, 256, (56, 84, 3), dtype=np.uint8) for _ in range(8)]
    vis = [q.prepare_video(frames, cfg, duration_s=d) for d in (2.0, 5.0)]
    text = "<|video_pad|> and <|video_pad|> then <|image_pad|>"
    img = q.prepare_image(picture(60, 70), cfg)
    item = q.prepare_item(tokenizer.encode(text).ids, [*vis, img], cfg)
    pos = hf_positions(
        "qwen2.5-vl",
        item.input_ids,
        item.mm_token_type_ids,
        image_grid_thw=item.grid_thw[2:],
        video_grid_thw=item.grid_thw[:2],
        second_per_grid_ts=np.array([v.seconds_per_grid for v in vis], dtype=np.float32),
    )
    np.testing.assert_array_equal(item.position_ids, pos)
    assert item.position_ids[0].max() > item.position_ids[1].max()  # time spacing stretched the axis


def test_qwen3_positions_split_videos_per_frame() -> None:
    """Qwen3-VL's processor puts a timestamp between frames; each frame is its own grid."""
    cfg = q.PRESETS["qwen3-vl"]
    grid = (2, 4, 6)  # two temporal patches of 2 x 3 merged tokens
    types = np.array([0, 0, *[2] * 6, 0, 0, 0, *[2] * 6, 0, *[1] * 4, 0], dtype=np.int64)
    pos, delta = q.rope_positions(types, [("video", grid, 1.0), ("image", (1, 4, 4), 1.0)], cfg)
    ids = np.where(types == 2, cfg.video_token_id, np.where(types == 1, cfg.image_token_id, 7))
    want = hf_positions(
        "qwen3-vl", ids, types, video_grid_thw=np.array([grid]), image_grid_thw=np.array([[1, 4, 4]])
    )
    np.testing.assert_array_equal(pos, want)
    assert delta == int(want.max()) + 1 - len(types)


QWEN3_PROCESSING = "models.qwen3_vl.processing_qwen3_vl"


@pytest.mark.parametrize(("frames", "fps"), [(6, 2.0), (5, 24.0), (8, 29.97)])
def test_qwen3_video_prompt_matches_hf(frames: int, fps: float) -> None:
    """Qwen3-VL's processor text for a bare `<|video_pad|>`, from its own `replace_video_token` and
    `_calculate_timestamps`: a timestamp (the mean of a frame pair's times, an odd last frame repeated)
    and vision start/end around every frame pair's tokens."""
    cfg = q.PRESETS["qwen3-vl"]
    video = q.prepare_video(
        [np.zeros((64, 96, 3), np.uint8)] * frames, cfg, times=[k / fps for k in range(frames)]
    )
    ours = q.qwen3_video_prompt("<|video_pad|>", [video], cfg)
    per_frame = video.n_tokens // video.grid_thw[0]
    ours = ours.replace("<|video_pad|>", "<|video_pad|>" * per_frame)
    calculate = hf_method(QWEN3_PROCESSING, "Qwen3VLProcessor", "_calculate_timestamps")
    hf = SimpleNamespace(
        video_processor=SimpleNamespace(merge_size=2, temporal_patch_size=2),
        video_token="<|video_pad|>",
        vision_start_token="<|vision_start|>",
        vision_end_token="<|vision_end|>",
    )
    hf._calculate_timestamps = lambda *args: calculate(hf, *args)
    metadata = SimpleNamespace(fps=fps, frames_indices=list(range(frames)))
    inputs = {"video_grid_thw": [np.array(video.grid_thw)], "video_metadata": [metadata]}
    replace = hf_method(QWEN3_PROCESSING, "Qwen3VLProcessor", "replace_video_token")
    assert ours == replace(hf, inputs, 0)
    assert ours.count("seconds>") == -(-frames // 2)


def test_qwen3_chat_form_is_replaced_whole_and_frames_get_their_own_grids(tokenizer) -> None:
    """The chat template's `<|vision_start|><|video_pad|><|vision_end|>` is replaced as one (transformers
    4.57's processor, the model's published code), and each frame pair's placeholder takes its tokens."""
    cfg = q.PRESETS["qwen3-vl"]
    video = q.prepare_video([np.zeros((64, 64, 3), np.uint8)] * 4, cfg, times=[0.0, 0.5, 1.0, 1.5])
    text = q.qwen3_video_prompt("user\n<|vision_start|><|video_pad|><|vision_end|>What?", [video], cfg)
    assert text == (
        "user\n<0.2 seconds><|vision_start|><|video_pad|><|vision_end|>"
        "<1.2 seconds><|vision_start|><|video_pad|><|vision_end|>What?"
    )
    item = q.prepare_item(tokenizer.encode(text).ids, [video], cfg)
    assert (item.mm_token_type_ids == q.VIDEO).sum() == video.n_tokens
    with pytest.raises(InvalidInput, match="one per frame pair"):  # the prompt was not written for it
        q.prepare_item(tokenizer.encode("<|video_pad|>").ids, [video], cfg)
    assert q.qwen3_video_prompt("<|video_pad|>", [video], CFG) == "<|video_pad|>"  # other families


def test_text_only_item(tokenizer) -> None:
    item = q.prepare_item(tokenizer.encode("a red square on the left").ids, [], CFG)
    assert item.vision_patches == 0 and item.grid_thw.shape == (0, 3)
    np.testing.assert_array_equal(item.position_ids, np.tile(np.arange(item.lm_tokens), (3, 1)))
    assert item.rope_delta == 0


def test_refusals(tokenizer) -> None:
    vis = q.prepare_image(picture(64, 64), CFG)
    with pytest.raises(InvalidInput, match="placeholders"):
        q.prepare_item(tokenizer.encode("no placeholder").ids, [vis], CFG)
    with pytest.raises(InvalidInput, match="not a image"):
        q.prepare_item(tokenizer.encode("<|video_pad|> x").ids, [vis], CFG)
    with pytest.raises(Unprocessable, match="aspect ratio"):
        q.prepare_image(picture(6000, 28), CFG)
    with pytest.raises(InvalidInput, match="uint8"):
        q.prepare_video([np.zeros((56, 56, 3), np.float32)], CFG)
    with pytest.raises(ValueError, match="min_pixels"):
        q.with_pixels(CFG, min_pixels=10**7)


def test_config_from_a_model_folder() -> None:
    """Qwen2-VL-2B-Instruct's published preprocessor limits, narrowed to VLM2Vec's by the registry."""
    preprocessor = {
        "min_pixels": 3136,
        "max_pixels": 12845056,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": list(q.CLIP_MEAN),
        "image_std": list(q.CLIP_STD),
    }
    config = {"model_type": "qwen2_vl", "image_token_id": 151655, "video_token_id": 151656}
    assert q.config_from_hf(preprocessor, config).max_pixels == 12845056
    assert q.config_from_hf(preprocessor, config, max_pixels=28 * 28 * 1280) == CFG
    qwen25 = {"model_type": "qwen2_5_vl", "vision_config": {"tokens_per_second": 2}}
    assert q.config_from_hf(preprocessor, qwen25).family == "qwen2.5-vl"
    with pytest.raises(ValueError, match="model_type"):
        q.config_from_hf(preprocessor, {"model_type": "llava"})


QWEN3_EMBEDDING = q.with_pixels(q.PRESETS["qwen3-vl"], min_pixels=4 * 32 * 32, max_pixels=1800 * 32 * 32)


@pytest.mark.parametrize(
    ("width", "height"), [(640, 480), (4000, 3000), (33, 900), (50, 40), (1920, 1080), (91, 77)]
)
def test_qwen3_vl_embedding_images_are_resized_as_qwen_vl_utils(
    qwen_vl_utils: ModuleType, width: int, height: int
) -> None:
    """Qwen3-VL-Embedding resizes images with qwen-vl-utils' `fetch_image` (PIL, factor 32, its pixel
    limits) and hands them to the processor with do_resize off: the same grid and the same uint8 patches
    as the gateway's preparation."""
    img = picture(width, height, seed=width)
    ele = {"image": img, "min_pixels": QWEN3_EMBEDDING.min_pixels, "max_pixels": QWEN3_EMBEDDING.max_pixels}
    theirs = qwen_vl_utils.fetch_image(ele, image_patch_size=16)
    ours = q.prepare_image(img, QWEN3_EMBEDDING)
    chw = np.asarray(theirs, dtype=np.uint8).transpose(2, 0, 1)
    patches, grid = q.patchify(np.broadcast_to(chw, (2, *chw.shape)), QWEN3_EMBEDDING)
    assert ours.grid_thw == grid
    np.testing.assert_array_equal(ours.pixel_values, patches)
