"""Qwen2-VL-family preprocessing in numpy: what the gateway sends a `vlm` engine, no transformers needed.

Golden-tested against transformers 5.24's PIL-backend `Qwen2VLImageProcessorPil` + `Qwen2VLProcessor`
(the default image processor and every video processor import torchvision, which cannot be installed
beside torch 2.13.0 here; the torchvision path resizes slightly differently). Pixels are bit-identical to
that backend: Pillow bicubic resize on uint8 here, then the engine's rescale in float64 then float32 and
normalize in float32 (`trt_build/vlm_model.py` `normalize_pixels`, with the `mean`/`std` resolved here).

The pipeline per item: resize each image/video to a multiple of patch x merge (28 px) within the pixel
budget, cut its uint8 pixels into patches of channels x temporal patch x 14 x 14 in HF's order (a still image
repeats its frame over the temporal patch), expand each placeholder token into grid_t*grid_h*grid_w/merge^2
tokens, mark them in `mm_token_type_ids` (0 text, 1 image, 2 video) and compute the 3-D M-RoPE positions
the language model needs (`get_rope_index`), so the engine never runs HF's preprocessing or rope code.
The batcher's costs per item are `lm_tokens` (text + visual tokens) and `vision_patches`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
from PIL import Image

from services.errors import InvalidInput, Unprocessable

Family = Literal["qwen2-vl", "qwen2.5-vl", "qwen3-vl"]
Kind = Literal["image", "video"]
TEXT, IMAGE, VIDEO = 0, 1, 2  # mm_token_type_ids values, as transformers 5 defines them
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_ASPECT_RATIO = 200  # Qwen's smart_resize refuses flatter images: their patch grid degenerates
VISION_START, VISION_END, VIDEO_PAD = "<|vision_start|>", "<|vision_end|>", "<|video_pad|>"
UNKNOWN_FPS = 24.0  # Qwen3-VL's processor times frames at 24 fps when the clip does not say
TIMESTAMP_TOKENS = 10  # at most, "<123.4 seconds>" in Qwen2 tokens (digits split): admission bound


@dataclass(frozen=True)
class QwenVLConfig:
    """Preprocessing contract of one model; defaults are VLM2Vec's Qwen2-VL settings.

    Images: VLM2Vec's `resize_min_pixels = 28*28*4`, `resize_max_pixels = 28*28*1280`, and sides under
    28 px squashed to 56 x 56 first. Video: 8 frames (VLM2Vec's video eval) at most 360*420 pixels a
    frame (its video demo), so one 8-frame clip costs at most ~770 visual tokens.
    """

    family: Family = "qwen2-vl"
    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2
    min_pixels: int = 28 * 28 * 4
    max_pixels: int = 28 * 28 * 1280
    video_min_pixels: int = 28 * 28 * 4
    video_max_pixels: int = 360 * 420
    frames: int = 8
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    tiny_side: int = 28  # an image with a side below this ...
    tiny_resize: int = 56  # ... is first resized to this square (VLM2Vec `image.resize((56, 56))`)
    image_token_id: int = 151655
    video_token_id: int = 151656
    tokens_per_second: float = 2.0  # Qwen2.5-VL only: temporal rope spacing of video grids

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    @property
    def patch_dim(self) -> int:
        return 3 * self.temporal_patch_size * self.patch_size * self.patch_size


PRESETS: dict[str, QwenVLConfig] = {
    "qwen2-vl": QwenVLConfig(),
    "qwen2.5-vl": QwenVLConfig(family="qwen2.5-vl"),
    "qwen3-vl": QwenVLConfig(family="qwen3-vl", patch_size=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
}


@dataclass(frozen=True)
class Visual:
    """One preprocessed image or video: patches in the vision tower's order and its patch grid."""

    kind: Kind
    pixel_values: np.ndarray  # uint8 [grid_t * grid_h * grid_w, patch_dim], before rescale and normalise
    grid_thw: tuple[int, int, int]
    n_tokens: int  # language-model tokens it becomes: grid_t * grid_h * grid_w / merge^2
    seconds_per_grid: float = 1.0  # video: seconds spanned by one temporal patch (Qwen2.5-VL rope)
    timestamps: tuple[float, ...] = ()  # Qwen3-VL video: seconds of each temporal patch (its prompt)

    @property
    def n_patches(self) -> int:
        return int(self.pixel_values.shape[0])


@dataclass(frozen=True)
class PreparedItem:
    """Everything the engine needs for one item, unpadded; `lm_tokens`/`vision_patches` are its costs."""

    input_ids: np.ndarray  # int64 [L], placeholders expanded
    mm_token_type_ids: np.ndarray  # int64 [L]
    position_ids: np.ndarray  # int64 [3, L] (temporal, height, width)
    rope_delta: int  # max position + 1 - L, what HF caches as `rope_deltas`
    pixel_values: np.ndarray  # uint8 [P, patch_dim], visuals concatenated in prompt order
    grid_thw: np.ndarray  # int64 [V, 3]
    kinds: tuple[Kind, ...] = field(default=())

    @property
    def lm_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def vision_patches(self) -> int:
        return int(self.pixel_values.shape[0])


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Nearest (h, w) in multiples of `factor` with h*w in [min_pixels, max_pixels], aspect kept.

    Rounds first; over budget scales down (floor), under budget scales up (ceil), as Qwen's reference
    does. A huge photo is therefore downscaled, never refused; only aspect ratios over 200 are.
    """
    if height < 1 or width < 1:
        raise Unprocessable(f"image has no pixels ({width}x{height})")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise Unprocessable(f"image aspect ratio {width}x{height} exceeds {MAX_ASPECT_RATIO}:1")
    h = round(height / factor) * factor
    w = round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def _source_size(height: int, width: int, cfg: QwenVLConfig) -> tuple[int, int]:
    """Size after VLM2Vec's tiny-image rule (a side under 28 px: squash to 56 x 56)."""
    if height < cfg.tiny_side or width < cfg.tiny_side:
        return cfg.tiny_resize, cfg.tiny_resize
    return height, width


def image_grid(height: int, width: int, cfg: QwenVLConfig) -> tuple[int, int, int]:
    """Patch grid (1, gh, gw) of an image of this size, without touching pixels (admission, costs)."""
    h, w = smart_resize(*_source_size(height, width, cfg), cfg.factor, cfg.min_pixels, cfg.max_pixels)
    return 1, h // cfg.patch_size, w // cfg.patch_size


def video_grid(n_frames: int, height: int, width: int, cfg: QwenVLConfig) -> tuple[int, int, int]:
    """Patch grid of a video of `n_frames` decoded frames after sampling `cfg.frames` of them."""
    t = len(sample_indices(n_frames, cfg.frames, cfg.temporal_patch_size))
    h, w = smart_resize(height, width, cfg.factor, cfg.video_min_pixels, cfg.video_max_pixels)
    return -(-t // cfg.temporal_patch_size), h // cfg.patch_size, w // cfg.patch_size


def grid_tokens(grid: Sequence[int], cfg: QwenVLConfig) -> int:
    return int(grid[0] * grid[1] * grid[2]) // (cfg.merge_size**2)


def grid_patches(grid: Sequence[int]) -> int:
    return int(grid[0] * grid[1] * grid[2])


def to_rgb(image: Image.Image | np.ndarray) -> Image.Image:
    """uint8 HxWx3 array or Pillow image -> RGB image; transparency is composited onto white (as HF)."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise InvalidInput(f"frames must be uint8 HxWx3 arrays, got {image.dtype} {image.shape}")
        return Image.fromarray(image, "RGB")
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def _chw(img: Image.Image) -> np.ndarray:
    """RGB -> uint8 [C, H, W] (a view). Rescale and normalise are the engine's (`normalize_pixels`): an
    image travels to Triton as a quarter of the float32 bytes and costs the gateway no float pass."""
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def patchify(frames: np.ndarray, cfg: QwenVLConfig) -> tuple[np.ndarray, tuple[int, int, int]]:
    """[F, C, H, W] (F a multiple of the temporal patch; any dtype) -> ([gt*gh*gw, C*T*p*p], (gt, gh, gw)).

    Patch rows run over temporal slices, then 2 x 2 merge blocks in raster order, then the 4 patches of
    a block, because the merger concatenates 4 consecutive rows into one language-model token. Each row
    holds channel, then time, then the 14 x 14 pixels.
    """
    n, c, height, width = frames.shape
    p, m, tp = cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size
    if n % tp or height % (p * m) or width % (p * m):
        raise ValueError(f"frames {frames.shape} do not tile into {tp} x {p * m} x {p * m} blocks")
    gt, gh, gw = n // tp, height // p, width // p
    x = frames.reshape(gt, tp, c, gh // m, m, p, gw // m, m, p)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)  # gt, block row, block col, row in block, col in block, C, T
    return np.ascontiguousarray(x).reshape(gt * gh * gw, c * tp * p * p), (gt, gh, gw)


def prepare_image(image: Image.Image | np.ndarray, cfg: QwenVLConfig) -> Visual:
    """One image -> uint8 patches: tiny-side rule, smart resize (bicubic), repeat over time, patchify."""
    img = to_rgb(image)
    width, height = img.size
    src_h, src_w = _source_size(height, width, cfg)
    if (src_h, src_w) != (height, width):
        img = img.resize((src_w, src_h), Image.Resampling.BICUBIC)
    h, w = smart_resize(src_h, src_w, cfg.factor, cfg.min_pixels, cfg.max_pixels)
    img = img.resize((w, h), Image.Resampling.BICUBIC)
    chw = _chw(img)
    frames = np.broadcast_to(chw, (cfg.temporal_patch_size, *chw.shape))
    patches, grid = patchify(frames, cfg)
    return Visual("image", patches, grid, grid_tokens(grid, cfg))


def sample_indices(n_frames: int, wanted: int, temporal_patch_size: int) -> list[int]:
    """Uniform frame indices as HF's `sample_frames` picks them: floor(k * n / N), N rounded to the
    temporal patch; a clip with fewer frames than wanted keeps all of them."""
    if n_frames < 1:
        raise Unprocessable("the video has no frames")
    wanted = max(temporal_patch_size, round(wanted / temporal_patch_size) * temporal_patch_size)
    if n_frames <= wanted:
        return list(range(n_frames))
    return [int(k * n_frames / wanted) for k in range(wanted)]


def prepare_video(
    frames: Sequence[np.ndarray | Image.Image],
    cfg: QwenVLConfig,
    *,
    duration_s: float | None = None,
    times: Sequence[float] | None = None,
) -> Visual:
    """Decoded frames (uint8 HxWx3, in time order) -> patches of `cfg.frames` uniformly sampled frames.

    Every frame is resized to the first frame's smart size under the video pixel budget; an odd count
    is padded by repeating the last frame (HF does the same). `duration_s` sets the seconds one temporal
    patch spans (Qwen2.5-VL spaces video positions by it); unknown, it is 1 s like HF's default.
    `times` (seconds of each decoded frame) become Qwen3-VL's per-patch timestamps: the mean of a
    patch's first and last frame, as its processor computes them from frame index / fps (unknown: the
    frame's index at 24 fps, its processor's fallback).
    """
    indices = sample_indices(len(frames), cfg.frames, cfg.temporal_patch_size)
    picked = [to_rgb(frames[i]) for i in indices]
    width, height = picked[0].size
    h, w = smart_resize(height, width, cfg.factor, cfg.video_min_pixels, cfg.video_max_pixels)
    stack = [_chw(f.resize((w, h), Image.Resampling.BICUBIC)) for f in picked]
    stack += [stack[-1]] * (-len(stack) % cfg.temporal_patch_size)
    patches, grid = patchify(np.stack(stack), cfg)
    seconds = 1.0
    if duration_s is not None and duration_s > 0:
        # sampled frames per second over the clip, as HF's processor derives `second_per_grid_ts`
        seconds = cfg.temporal_patch_size / (len(picked) / duration_s)
    stamps: tuple[float, ...] = ()
    if cfg.family == "qwen3-vl":
        tp = cfg.temporal_patch_size
        at = [float(times[i]) if times is not None else i / UNKNOWN_FPS for i in indices]
        at += [at[-1]] * (-len(at) % tp)  # padded as the frames are, above
        stamps = tuple((at[k] + at[k + tp - 1]) / 2 for k in range(0, len(at), tp))
    return Visual("video", patches, grid, grid_tokens(grid, cfg), seconds, stamps)


def qwen3_video_prompt(prompt: str, visuals: Sequence[Visual], cfg: QwenVLConfig) -> str:
    """The prompt as Qwen3-VL's processor writes it for videos (transformers 4.57, the code the model was
    published with): each video's `<|vision_start|><|video_pad|><|vision_end|>` (or a bare
    `<|video_pad|>`), in order, becomes per temporal patch `<{t:.1f} seconds>` + vision start + its
    frame's placeholder + vision end; `expand_placeholders` then expands each frame's placeholder.
    (transformers 5.24 replaces only the `<|video_pad|>` and keeps the outer start/end tokens.)
    Other families and prompts without video come back unchanged."""
    if cfg.family != "qwen3-vl":
        return prompt
    mark = "\x00frame\x00"  # the written frames' placeholders must not match the next video's search
    whole = VISION_START + VIDEO_PAD + VISION_END
    for vis in visuals:
        if vis.kind != "video":
            continue
        frames = "".join(f"<{t:.1f} seconds>{VISION_START}{mark}{VISION_END}" for t in vis.timestamps)
        prompt = prompt.replace(whole if whole in prompt else VIDEO_PAD, frames, 1)
    return prompt.replace(mark, VIDEO_PAD)


def mm_token_types(ids: np.ndarray, cfg: QwenVLConfig) -> np.ndarray:
    """0 text, 1 image token, 2 video token (transformers 5's `mm_token_type_ids`)."""
    out = np.zeros(ids.shape, dtype=np.int64)
    out[ids == cfg.image_token_id] = IMAGE
    out[ids == cfg.video_token_id] = VIDEO
    return out


def expand_placeholders(
    ids: Sequence[int] | np.ndarray, visuals: Sequence[Visual], cfg: QwenVLConfig, field: str | None = None
) -> np.ndarray:
    """Replace the i-th `<|image_pad|>`/`<|video_pad|>` token with visuals[i].n_tokens copies of itself.

    Equal to expanding the placeholder string before tokenizing (the processor's way): the placeholders
    are special tokens, so the text around them tokenizes the same either way.
    """
    arr = np.asarray(ids, dtype=np.int64)
    slots = np.flatnonzero((arr == cfg.image_token_id) | (arr == cfg.video_token_id))
    pieces = [
        piece
        for vis in visuals
        for piece in (
            # Qwen3-VL: one placeholder per temporal patch, between timestamps (qwen3_video_prompt)
            [(vis.kind, vis.n_tokens // vis.grid_thw[0])] * vis.grid_thw[0]
            if cfg.family == "qwen3-vl" and vis.kind == "video"
            else [(vis.kind, vis.n_tokens)]
        )
    ]
    if len(slots) != len(pieces):
        per_frame = " (a qwen3-vl video takes one per frame pair)" if len(pieces) != len(visuals) else ""
        raise InvalidInput(
            f"the prompt has {len(slots)} image/video placeholders for {len(pieces)} media grids{per_frame}",
            field=field,
        )
    counts = np.ones(len(arr), dtype=np.int64)
    for slot, (kind, n_tokens) in zip(slots, pieces, strict=True):
        want = cfg.image_token_id if kind == "image" else cfg.video_token_id
        if arr[slot] != want:
            raise InvalidInput(f"placeholder {int(slot)} is not a {kind} placeholder", field=field)
        counts[slot] = n_tokens
    return np.repeat(arr, counts)


def _rope_grids(visuals: Sequence[tuple[Kind, tuple[int, int, int], float]], family: Family):
    """Qwen3-VL gives every video frame its own grid (its prompts put a timestamp before each frame)."""
    for kind, (t, h, w), seconds in visuals:
        if family == "qwen3-vl" and kind == "video":
            yield from ((kind, (1, h, w), seconds) for _ in range(t))
        else:
            yield kind, (t, h, w), seconds


def rope_positions(
    token_types: np.ndarray,
    visuals: Sequence[tuple[Kind, tuple[int, int, int], float]],
    cfg: QwenVLConfig,
) -> tuple[np.ndarray, int]:
    """3-D M-RoPE positions [3, L] of one unpadded sequence, and its rope delta (transformers' rule).

    Text runs count up on all three axes. A visual grid starts at the running position p: temporal
    index t * interval + p, row + p, column + p over the merged grid; the running position then advances
    by max(rows, columns) (transformers 5.24; Qwen's original code advanced past the largest index of
    all three axes, which differs only when a video has more temporal patches than rows and columns).
    Visual runs are consumed grid by grid, so two adjacent placeholders are handled too.
    `visuals` holds (kind, grid_thw, seconds_per_grid) in prompt order.
    """
    types = np.asarray(token_types)
    n = len(types)
    pos = np.empty((3, n), dtype=np.int64)
    grids = iter(_rope_grids(visuals, cfg.family))
    m = cfg.merge_size
    cur = 0
    i = 0
    while i < n:
        if types[i] == TEXT:
            nxt = np.flatnonzero(types[i:] != TEXT)
            j = i + (int(nxt[0]) if len(nxt) else n - i)
            pos[:, i:j] = np.arange(j - i, dtype=np.int64) + cur
            cur += j - i
            i = j
            continue
        try:
            kind, (t, h, w), seconds = next(grids)
        except StopIteration:
            raise InvalidInput("more visual tokens than image/video grids") from None
        lh, lw = h // m, w // m
        size = t * lh * lw
        want = IMAGE if kind == "image" else VIDEO
        if i + size > n or np.any(types[i : i + size] != want):
            raise InvalidInput(f"the {kind} grid {(t, h, w)} does not match its placeholder tokens")
        interval = cfg.tokens_per_second * seconds if cfg.family == "qwen2.5-vl" and kind == "video" else 1
        temporal = (np.arange(t, dtype=np.float32) * np.float32(interval)).astype(np.int64)
        pos[0, i : i + size] = np.repeat(temporal, lh * lw) + cur
        pos[1, i : i + size] = np.tile(np.repeat(np.arange(lh), lw), t) + cur
        pos[2, i : i + size] = np.tile(np.arange(lw), t * lh) + cur
        cur += max(lh, lw)
        i += size
    if next(grids, None) is not None:
        raise InvalidInput("more image/video grids than visual tokens")
    delta = int(pos.max()) + 1 - n if n else 0
    return pos, delta


def prepare_item(
    ids: Sequence[int] | np.ndarray, visuals: Sequence[Visual], cfg: QwenVLConfig, field: str | None = None
) -> PreparedItem:
    """Tokenized prompt (one placeholder per visual, in order) + its visuals -> engine inputs and costs."""
    expanded = expand_placeholders(ids, visuals, cfg, field)
    types = mm_token_types(expanded, cfg)
    positions, delta = rope_positions(types, [(v.kind, v.grid_thw, v.seconds_per_grid) for v in visuals], cfg)
    if visuals:
        pixels = np.concatenate([v.pixel_values for v in visuals])
        grids = np.asarray([v.grid_thw for v in visuals], dtype=np.int64)
    else:
        pixels = np.zeros((0, cfg.patch_dim), dtype=np.uint8)
        grids = np.zeros((0, 3), dtype=np.int64)
    return PreparedItem(expanded, types, positions, delta, pixels, grids, tuple(v.kind for v in visuals))


def item_cost(
    text_tokens: int, grids: Sequence[tuple[Kind, tuple[int, int, int]]], cfg: QwenVLConfig
) -> tuple[int, int]:
    """(lm_tokens, vision_patches) of an item before any pixel work: `text_tokens` counts each
    placeholder once, as tokenized; grids come from `image_grid` / `video_grid`. A Qwen3-VL video's
    timestamps and per-frame start/end tokens are counted at their most (`TIMESTAMP_TOKENS`)."""
    visual_tokens = sum(grid_tokens(g, cfg) for _, g in grids)
    if cfg.family == "qwen3-vl":
        visual_tokens += sum(g[0] * (TIMESTAMP_TOKENS + 2) for kind, g in grids if kind == "video")
    return text_tokens - len(grids) + visual_tokens, sum(grid_patches(g) for _, g in grids)


MODEL_TYPES: dict[str, Family] = {"qwen2_vl": "qwen2-vl", "qwen2_5_vl": "qwen2.5-vl", "qwen3_vl": "qwen3-vl"}


def config_from_hf(preprocessor: dict, model_config: dict, **overrides: object) -> QwenVLConfig:
    """QwenVLConfig from a model folder's `preprocessor_config.json` and `config.json` (parsed), so a
    deployed folder (real weights, or a compact-vocabulary test model) carries its own token ids and
    pixel limits; `overrides` (e.g. the registry's VLM2Vec limits) win."""
    family = MODEL_TYPES.get(str(model_config.get("model_type")))
    if family is None:
        raise ValueError(f"not a Qwen2-VL-family config: model_type {model_config.get('model_type')!r}")
    size = preprocessor.get("size") or {}
    vision = model_config.get("vision_config") or {}
    base = PRESETS[family]
    fields: dict[str, object] = {
        "family": family,
        "patch_size": int(preprocessor.get("patch_size", base.patch_size)),
        "merge_size": int(preprocessor.get("merge_size", base.merge_size)),
        "temporal_patch_size": int(preprocessor.get("temporal_patch_size", base.temporal_patch_size)),
        "min_pixels": int(preprocessor.get("min_pixels") or size.get("shortest_edge") or base.min_pixels),
        "max_pixels": int(preprocessor.get("max_pixels") or size.get("longest_edge") or base.max_pixels),
        "mean": tuple(preprocessor.get("image_mean", base.mean)),
        "std": tuple(preprocessor.get("image_std", base.std)),
        "image_token_id": int(model_config.get("image_token_id", base.image_token_id)),
        "video_token_id": int(model_config.get("video_token_id", base.video_token_id)),
        "tokens_per_second": float(vision.get("tokens_per_second", base.tokens_per_second)),
    }
    for key in ("video_min_pixels", "video_max_pixels", "frames"):
        if key in preprocessor:
            fields[key] = int(preprocessor[key])
    return with_pixels(base, **{**fields, **overrides})


def with_pixels(cfg: QwenVLConfig, **changes: object) -> QwenVLConfig:
    """A copy with other limits (e.g. a registry's min/max pixels), validated."""
    out = replace(cfg, **changes)  # type: ignore[arg-type]
    if out.min_pixels > out.max_pixels or out.video_min_pixels > out.video_max_pixels:
        raise ValueError("min_pixels must not exceed max_pixels")
    if out.max_pixels < out.factor**2 or out.video_max_pixels < out.factor**2:
        raise ValueError(f"max pixels must allow at least one {out.factor} x {out.factor} block")
    return out
