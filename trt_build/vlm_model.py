"""Triton python-backend model, `vlm` engine: a Qwen2-VL-family backbone as a VLM2Vec-style embedder.

Copied into the repository as `<model>/<version>/model.py` with `pooling.py` beside it
(trt_build/model_files.py); it imports only numpy, torch, transformers, that sibling and (inside
`TritonPythonModel` only) the backend's utilities, never the project. CPU fp32 for tests,
CUDA bf16 where available. The gateway does all preprocessing in numpy (`services/media/qwen2vl.py`):
resize, patches, placeholder expansion and the 3-D M-RoPE positions, so this model runs no HF processor
and no HF rope code, and `model.rope_deltas` (generation state HF keeps on the model object) is never
read or written: the vision tower and the language model are called directly.

Triton I/O (config: `max_batch_size` > 0 with dynamic batching, every input `allow_ragged_batch: true`;
ONE Triton request carries a group of n items, so every tensor has a leading batch dimension of 1):

| tensor         | type  | dims (after batch) | what |
|----------------|-------|--------------------|------|
| `input_ids`    | INT64 | [ -1 ]             | all items' ids concatenated (placeholders expanded) |
| `item_lengths` | INT64 | [ -1 ]             | n lengths; they sum to len(input_ids) |
| `position_ids` | INT64 | [ 3, -1 ]          | M-RoPE (temporal, height, width) per token, each item from 0 |
| `pixel_values` | UINT8 | [ -1, patch_dim ]  | optional: all image/video patches, item then prompt order |
| `grid_thw`     | INT64 | [ -1, 3 ]          | optional: one (t, h, w) row per image/video, same order |
| `embeddings`   | FP32  | [ -1, hidden ]     | output: n L2-normalized vectors, in item order |

An image and a video are told apart by their tokens (`<|image_pad|>` / `<|video_pad|>` runs), so grids
need no kind column. All requests of one `execute` become one padded batch (left or right per the
registry's padding side): one vision-tower call over all patches (attention stays within each image's
temporal slices), placeholder tokens replaced by the merged vision features, one language-model call,
then the final-norm hidden state of each row's last real token (VLM2Vec's `last`/`eos` pooling),
L2-normalized. A malformed request fails alone at validation; if the merged run itself fails (e.g.
out of memory), each request is retried alone so only the one that cannot run fails.

On CUDA, with `cuda_graphs` and `buckets` in the config (the gpu build target writes them), the language
model replays a CUDA graph captured at load for the smallest (rows, width) bucket holding the batch, which
is padded to it under the engine's own 4-D causal mask; batches no bucket holds, and Qwen3-VL batches with
visuals (deepstack inputs), run eagerly.

Pixels arrive as the uint8 patches of the resized images (a quarter of float32's bytes on the wire and
on the way to the GPU); the engine rescales and normalises them with the model's `image_mean`/`image_std`
(config parameters written at build time) exactly as the HF processor does (`normalize_pixels`).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import buckets as bk
from . import pooling

INPUT_NAMES = ("input_ids", "item_lengths", "position_ids", "pixel_values", "grid_thw")
OPTIONAL_INPUTS = ("pixel_values", "grid_thw")
OUTPUT_NAME = "embeddings"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass(frozen=True)
class VlmRequest:
    """One Triton request: a group of items, flat and unpadded."""

    input_ids: np.ndarray  # int64 [T]
    lengths: np.ndarray  # int64 [n]
    position_ids: np.ndarray  # int64 [3, T]
    pixel_values: np.ndarray  # uint8 [P, patch_dim] as served (P = 0 for text only); float32 = normalised
    grid_thw: np.ndarray  # int64 [V, 3]

    @property
    def n_items(self) -> int:
        return len(self.lengths)


@dataclass(frozen=True)
class TokenSpec:
    """What validation needs to know about the backbone."""

    image_token_id: int
    video_token_id: int
    merge_size: int
    patch_dim: int
    vocab_size: int
    max_seq_length: int = 32768
    max_patches: int = 1 << 20  # vision patches one request may carry


def _strip_batch(array: np.ndarray, rank: int, name: str) -> np.ndarray:
    """Drop Triton's leading batch dimension of 1 (accept the bare tensor too, for direct callers)."""
    if array.ndim == rank + 1:
        if array.shape[0] != 1:
            raise ValueError(f"{name}: one request carries one group (batch dim 1), got {array.shape}")
        array = array[0]
    if array.ndim != rank:
        raise ValueError(f"{name}: expected rank {rank} (+ batch dim), got shape {array.shape}")
    return array


def _pixels(array: np.ndarray) -> np.ndarray:
    """The served pixels: uint8 patches, exactly (a float tensor here would be a client on the old
    contract, and casting it would feed the tower garbage)."""
    pixels = _strip_batch(np.asarray(array), 2, "pixel_values")
    if pixels.dtype != np.uint8:
        raise ValueError(
            f"pixel_values must be uint8 patches (rescaled and normalised here), got {pixels.dtype}"
        )
    return pixels


def normalize_pixels(patches: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 [P, patch_dim] -> float32 as the HF processor computes it, bit for bit: x / 255 in float64
    (its rescale), cast to float32, then (x - mean) / std in float32. `mean`/`std` are per column
    (`column_stats`). Done here rather than in the gateway: a quarter of the bytes cross to Triton (and
    to the GPU), and the gateway's event loop does no float pass over the image."""
    x = (patches.to(torch.float64) * (1 / 255)).to(torch.float32)
    return (x - mean) / std


def column_stats(values: Sequence[float], patch_dim: int, device: torch.device) -> torch.Tensor:
    """Per-channel mean or std -> one float32 value per patch column (a patch row holds channel, then
    time, then pixels, so each channel owns a contiguous third)."""
    per = torch.tensor([float(v) for v in values], dtype=torch.float32)
    if per.shape != (3,) or patch_dim % 3:
        raise ValueError(f"need 3 channel values for {patch_dim} columns, got {list(values)}")
    return per.repeat_interleave(patch_dim // 3).to(device)


def pixel_stats(path: str | os.PathLike[str]) -> tuple[list[float], list[float]]:
    """`image_mean` and `image_std` (3 values each) from a `preprocessor_config.json`; ValueError naming
    the file where they are missing or malformed. The build writes them into config.pbtxt from here."""
    try:
        with open(path) as fh:
            pre = json.load(fh)
        mean, std = [float(v) for v in pre["image_mean"]], [float(v) for v in pre["image_std"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} must name image_mean and image_std ({exc!r})") from exc
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"image_mean and image_std need 3 values each in {path}")
    return mean, std


def parse_request(arrays: dict[str, np.ndarray | None], patch_dim: int) -> VlmRequest:
    """Named arrays of one request -> VlmRequest with dtypes fixed and shapes checked."""
    for name in INPUT_NAMES:
        if arrays.get(name) is None and name not in OPTIONAL_INPUTS:
            raise ValueError(f"missing input {name}")
    pixels = arrays.get("pixel_values")
    grids = arrays.get("grid_thw")
    if (pixels is None) != (grids is None):
        raise ValueError("pixel_values and grid_thw come together")

    def get(name: str, rank: int, dtype: type) -> np.ndarray:
        return _strip_batch(np.asarray(arrays[name]), rank, name).astype(dtype, copy=False)

    return VlmRequest(
        input_ids=get("input_ids", 1, np.int64),
        lengths=get("item_lengths", 1, np.int64),
        position_ids=get("position_ids", 2, np.int64),
        pixel_values=np.zeros((0, patch_dim), np.uint8) if pixels is None else _pixels(pixels),
        grid_thw=np.zeros((0, 3), np.int64) if grids is None else get("grid_thw", 2, np.int64),
    )


def check_request(req: VlmRequest, spec: TokenSpec) -> None:
    """Everything that would otherwise fail (or silently misplace features) inside the merged batch."""
    total = len(req.input_ids)
    if req.n_items < 1 or np.any(req.lengths < 1):
        raise ValueError("item_lengths must hold at least one positive length")
    if int(req.lengths.sum()) != total:
        raise ValueError(f"item_lengths sum to {int(req.lengths.sum())}, input_ids has {total} tokens")
    if int(req.lengths.max()) > spec.max_seq_length:
        raise ValueError(f"an item has {int(req.lengths.max())} tokens; the limit is {spec.max_seq_length}")
    if req.position_ids.shape != (3, total):
        raise ValueError(f"position_ids must be [3, {total}], got {list(req.position_ids.shape)}")
    if total and (req.input_ids.min() < 0 or req.input_ids.max() >= spec.vocab_size):
        raise ValueError(f"input_ids must lie in [0, {spec.vocab_size})")
    if req.grid_thw.shape[1:] != (3,) or np.any(req.grid_thw < 1):
        raise ValueError("grid_thw rows must be positive (t, h, w)")
    m = spec.merge_size
    if np.any(req.grid_thw[:, 1:] % m):
        raise ValueError(f"grid_thw heights and widths must be multiples of the merge size {m}")
    patches = req.grid_thw.prod(axis=1)
    if req.pixel_values.shape != (int(patches.sum()), spec.patch_dim):
        raise ValueError(
            f"pixel_values must be [{int(patches.sum())}, {spec.patch_dim}] for these grids, "
            f"got {list(req.pixel_values.shape)}"
        )
    if int(patches.sum()) > spec.max_patches:
        raise ValueError(f"{int(patches.sum())} vision patches exceed the limit of {spec.max_patches}")
    if req.pixel_values.dtype != np.uint8 and not np.isfinite(req.pixel_values).all():
        raise ValueError("pixel_values hold NaN or infinity")
    # each item's visual tokens must be covered exactly by whole grids, in order
    tokens = list(patches // (m * m))
    visual = (req.input_ids == spec.image_token_id) | (req.input_ids == spec.video_token_id)
    start = 0
    g = 0
    for i, n in enumerate(req.lengths.tolist()):
        need = int(visual[start : start + n].sum())
        while need > 0 and g < len(tokens):
            need -= tokens[g]
            g += 1
        if need != 0:
            raise ValueError(f"item {i}: its image/video tokens do not match the grids given for it")
        start += n
    if g != len(tokens):
        raise ValueError(f"{len(tokens) - g} grids have no image/video tokens")


@dataclass
class Batch:
    """Padded model inputs for the rows of several requests."""

    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    position_ids: torch.Tensor  # [3, B, L]
    pixel_values: torch.Tensor | None  # [P, patch_dim] uint8 as served, or float32 already normalised
    grid_thw: torch.Tensor | None  # [V, 3]
    rows: list[int]  # items per request, in order


def assemble(requests: Sequence[VlmRequest], padding_side: str, pad_token_id: int) -> Batch:
    """Concatenate every request's items into one padded batch; visuals stay in row-major token order,
    which is the order the placeholder positions are filled in."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be left or right, got {padding_side!r}")
    items: list[tuple[np.ndarray, np.ndarray]] = []
    for req in requests:
        bounds = itertools.pairwise([0, *np.cumsum(req.lengths).tolist()])
        items += [(req.input_ids[a:b], req.position_ids[:, a:b]) for a, b in bounds]
    width = max(len(ids) for ids, _ in items)
    ids = np.full((len(items), width), pad_token_id, dtype=np.int64)
    mask = np.zeros((len(items), width), dtype=np.int64)
    pos = np.zeros((3, len(items), width), dtype=np.int64)
    for row, (item_ids, item_pos) in enumerate(items):
        n = len(item_ids)
        cols = slice(width - n, width) if padding_side == "left" else slice(0, n)
        ids[row, cols] = item_ids
        mask[row, cols] = 1
        pos[:, row, cols] = item_pos
    pixels = [r.pixel_values for r in requests if len(r.pixel_values)]
    grids = [r.grid_thw for r in requests if len(r.grid_thw)]
    return Batch(
        input_ids=torch.from_numpy(ids),
        attention_mask=torch.from_numpy(mask),
        position_ids=torch.from_numpy(pos),
        pixel_values=torch.from_numpy(np.concatenate(pixels)) if pixels else None,
        grid_thw=torch.from_numpy(np.concatenate(grids)) if grids else None,
        rows=[r.n_items for r in requests],
    )


@dataclass
class LanguageInputs:
    """What the language model reads: token embeddings with the vision features in their slots."""

    embeds: torch.Tensor  # [B, L, hidden]
    mask: torch.Tensor  # [B, L] 1 = real token
    positions: torch.Tensor  # [3, B, L] M-RoPE
    extra: dict[str, Any]  # Qwen3-VL's deepstack features (data-dependent: never graphed)


def language_inputs(
    model: Any, batch: Batch, spec: TokenSpec, device: torch.device, dtype: torch.dtype
) -> LanguageInputs:
    """Vision tower over all patches, its features into the placeholder slots of the token embeddings."""
    ids = batch.input_ids.to(device)
    embeds = model.get_input_embeddings()(ids)
    extra: dict[str, Any] = {}
    if batch.pixel_values is not None and batch.grid_thw is not None:
        vision = model.visual(batch.pixel_values.to(device, dtype), grid_thw=batch.grid_thw.to(device))
        feats = vision.pooler_output
        slots = (ids == spec.image_token_id) | (ids == spec.video_token_id)
        if int(slots.sum()) != feats.shape[0]:
            raise ValueError(f"{int(slots.sum())} placeholders for {feats.shape[0]} vision features")
        embeds = embeds.masked_scatter(slots.unsqueeze(-1), feats.to(embeds.dtype))
        if hasattr(model.visual, "deepstack_merger_list"):  # Qwen3-VL feeds tower layers into early LM layers
            extra = {"visual_pos_masks": slots, "deepstack_visual_embeds": vision.deepstack_features}
    return LanguageInputs(embeds, batch.attention_mask.to(device), batch.position_ids.to(device), extra)


def backbone_forward(
    model: Any, batch: Batch, spec: TokenSpec, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Vision tower, features into the placeholder slots, language model with the given 3-D positions,
    last-token pooling (either padding side), L2-normalized. Plain autograd-capable code: the trainer uses
    it too. `model` is the transformers backbone: `.visual` and `.language_model`."""
    x = language_inputs(model, batch, spec, device, dtype)
    return pooling.l2_normalize(pooling.pool(language_eager(model, x), x.mask, "last-token"))


def language_eager(model: Any, x: LanguageInputs) -> torch.Tensor:
    """The language model's last hidden state over `x`, transformers building the mask from the 2-D one."""
    out = model.language_model(
        inputs_embeds=x.embeds, attention_mask=x.mask, position_ids=x.positions, use_cache=False, **x.extra
    )
    hidden: torch.Tensor = out.last_hidden_state
    return hidden


def causal_mask(valid: torch.Tensor) -> torch.Tensor:
    """[B, L] 0/1 -> [B, 1, L, L] bool, True where a query may attend: earlier or same real tokens; a
    padding query also attends to itself, so one with no real key before it stays finite (padding is never
    pooled, and real rows never see it). What transformers builds from the 2-D mask, made here so a graph
    can take it as an input."""
    n = valid.shape[1]
    idx = torch.arange(n, device=valid.device)
    allowed = (idx[None, :] <= idx[:, None])[None] & valid.bool()[:, None, :]
    return (allowed | torch.eye(n, dtype=torch.bool, device=valid.device))[:, None]


@dataclass
class LanguageGraph:
    """One captured (rows, width) shape of the language model: static inputs, the output they produce."""

    graph: Any  # torch.cuda.CUDAGraph
    embeds: torch.Tensor
    mask: torch.Tensor  # causal_mask's form
    positions: torch.Tensor
    hidden: torch.Tensor


class LinearPatchEmbed(torch.nn.Module):
    """Qwen2/2.5/3-VL's patch embedding as one matmul: its Conv3d has kernel = stride over a patch that
    arrives already flattened, so it is a linear map of the patch; on CPU the convolution took 11% of
    the engine's time for 56-px images, and its backward 4x the matmul's in training. It reads the conv's
    own weights (a view, same flatten order: channel, time, row, column), so they stay trainable and the
    state dict keeps its keys (`patch_embed.proj.*`)."""

    def __init__(self, conv: torch.nn.Conv3d) -> None:
        super().__init__()
        self.proj = conv

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        weight = self.proj.weight.flatten(1)
        x = hidden_states.reshape(-1, weight.shape[1]).to(weight.dtype)
        return torch.nn.functional.linear(x, weight, self.proj.bias)


def linear_patch_embed(visual: Any) -> bool:
    """Swap a vision tower's Conv3d patch embedding for `LinearPatchEmbed` where it is one (kernel =
    stride, no padding); False where the tower has another shape and keeps its own."""
    embed = getattr(visual, "patch_embed", None)
    conv = getattr(embed, "proj", None)
    if not isinstance(conv, torch.nn.Conv3d):
        return False
    if tuple(conv.kernel_size) != tuple(conv.stride) or any(conv.padding) or conv.groups != 1:
        return False
    visual.patch_embed = LinearPatchEmbed(conv)
    return True


class VlmEngine:
    """The backbone (`Qwen2VLModel`-like: `.visual` + `.language_model`) and the batch forward."""

    def __init__(
        self,
        model: Any,  # a transformers model: its config and `rope_deltas` are no torch.nn.Module attributes
        device: str = "cpu",
        dtype: str = "bfloat16",
        padding_side: str = "left",
        max_seq_length: int = 32768,
        max_patches: int = 1 << 20,
        max_batch_tokens: int = 1 << 16,
        *,
        image_mean: Sequence[float],
        image_std: Sequence[float],
        buckets: bk.BucketSet | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.dtype = DTYPES[dtype] if self.device.type == "cuda" else torch.float32
        self.model = model.to(self.device, self.dtype).eval()
        linear_patch_embed(self.model.visual)
        # the language model runs padded to a (rows, width) bucket, replaying a CUDA graph where one was
        # captured (`capture`); only a model whose layers all take the one full-attention mask
        layer_types = getattr(self.model.language_model.config, "layer_types", None) or ["full_attention"]
        self.buckets = buckets if all(t == "full_attention" for t in layer_types) else None
        self.graphs: dict[tuple[int, int], LanguageGraph] = {}
        self.padding_side = padding_side
        self.max_batch_tokens = max_batch_tokens  # padded rows x width of one forward
        config = model.config
        text = getattr(config, "text_config", config)
        vision = config.vision_config
        patch = vision.patch_size
        self.spec = TokenSpec(
            image_token_id=int(config.image_token_id),
            video_token_id=int(config.video_token_id),
            merge_size=int(vision.spatial_merge_size),
            patch_dim=int(vision.in_channels * vision.temporal_patch_size * patch * patch),
            vocab_size=int(text.vocab_size),
            max_seq_length=max_seq_length,
            max_patches=max_patches,
        )
        pad = getattr(text, "pad_token_id", None)  # any id works: pads are masked and never pooled
        self.pad_token_id = int(pad) if pad is not None else int(getattr(text, "bos_token_id", None) or 0)
        self.hidden_size = int(text.hidden_size)
        self.pixel_mean = column_stats(image_mean, self.spec.patch_dim, self.device)
        self.pixel_std = column_stats(image_std, self.spec.patch_dim, self.device)
        self._lock = threading.Lock()  # one forward at a time per model object

    @classmethod
    def load(
        cls,
        model_dir: str,
        device: str = "cpu",
        dtype: str = "bfloat16",
        attn_implementation: str = "sdpa",
        padding_side: str = "left",
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        buckets: bk.BucketSet | None = None,
        **limits: int,
    ) -> VlmEngine:
        """The bare backbone (AutoModel: no LM head) from a saved ...ForConditionalGeneration folder.
        The pixel mean and std come from the caller (Triton: config.pbtxt, as the build resolved them with
        the gateway's own reader) or else from the folder's `preprocessor_config.json`."""
        import transformers

        if image_mean is None or image_std is None:
            image_mean, image_std = pixel_stats(os.path.join(model_dir, "preprocessor_config.json"))
        model = transformers.AutoModel.from_pretrained(model_dir, attn_implementation=attn_implementation)
        return cls(
            model,
            device,
            dtype,
            padding_side,
            image_mean=image_mean,
            image_std=image_std,
            buckets=buckets,
            **limits,
        )

    @torch.inference_mode()
    def forward(self, batch: Batch) -> torch.Tensor:
        """Padded batch -> [B, hidden] normalized fp32 vectors on the device. uint8 pixels (as served)
        are rescaled and normalised on the device first; float pixels are taken as normalised."""
        if batch.pixel_values is not None and batch.pixel_values.dtype == torch.uint8:
            pixels = normalize_pixels(batch.pixel_values.to(self.device), self.pixel_mean, self.pixel_std)
            batch = dataclasses.replace(batch, pixel_values=pixels)
        x = language_inputs(self.model, batch, self.spec, self.device, self.dtype)
        if self.buckets is not None and not x.extra:
            hidden = self._language_in_bucket(x)
        else:
            hidden = language_eager(self.model, x)
        return pooling.l2_normalize(pooling.pool(hidden, x.mask, "last-token"))

    def _language(self, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The language model on a `causal_mask` (passed as transformers' prepared mask mapping, so it
        builds none: nothing in the call depends on the data, and it can be captured)."""
        out = self.model.language_model(
            inputs_embeds=embeds,
            attention_mask={"full_attention": mask},
            position_ids=positions,
            use_cache=False,
        )
        hidden: torch.Tensor = out.last_hidden_state
        return hidden

    def _language_in_bucket(self, x: LanguageInputs) -> torch.Tensor:
        """The language model padded to the smallest bucket holding the batch (rows and columns of padding
        after it), through its graph when captured; the batch's own rows and columns come back. A batch no
        bucket holds runs as it is."""
        assert self.buckets is not None
        b, n = x.embeds.shape[0], x.embeds.shape[1]
        try:
            rows, width = self.buckets.choose(b, n)
        except ValueError:
            return self._language(x.embeds, causal_mask(x.mask), x.positions)
        cols = slice(0, n)  # where the batch sits does not matter: positions are given, pads are masked
        embeds = x.embeds.new_zeros((rows, width, x.embeds.shape[2]))
        valid = x.mask.new_zeros((rows, width))
        positions = x.positions.new_zeros((3, rows, width))
        embeds[:b, cols], valid[:b, cols], positions[:, :b, cols] = x.embeds, x.mask, x.positions
        mask = causal_mask(valid)
        entry = self.graphs.get((rows, width))
        if entry is None:
            hidden = self._language(embeds, mask, positions)
        else:
            entry.embeds.copy_(embeds)
            entry.mask.copy_(mask)
            entry.positions.copy_(positions)
            entry.graph.replay()
            hidden = entry.hidden
        return hidden[:b, cols]

    @torch.inference_mode()
    def capture(self, warmup: int = 2) -> int:
        """A CUDA graph of the language model per bucket, largest first, in one memory pool (a replay's
        output is read before the next replay starts, so sharing the pool is safe). Qwen3-VL items with
        visuals bypass them (their deepstack inputs depend on the data). Returns how many were captured;
        none off CUDA or without buckets."""
        if self.buckets is None or self.device.type != "cuda":
            return 0
        pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream(self.device)
        for rows, width in self.buckets.pairs():
            embeds = torch.zeros((rows, width, self.hidden_size), dtype=self.dtype, device=self.device)
            mask = causal_mask(torch.ones((rows, width), dtype=torch.int64, device=self.device))
            positions = torch.zeros((3, rows, width), dtype=torch.int64, device=self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    self._language(embeds, mask, positions)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                hidden = self._language(embeds, mask, positions)
            self.graphs[(rows, width)] = LanguageGraph(graph, embeds, mask, positions, hidden)
        torch.cuda.synchronize(self.device)
        return len(self.graphs)

    def embed(self, requests: Sequence[VlmRequest]) -> list[np.ndarray | Exception]:
        """Per request: [n_items, hidden] float32, or the error that request alone caused.

        Validates each request, runs all valid ones as one batch; if that fails, runs them one by one."""
        results: list[np.ndarray | Exception | None] = [None] * len(requests)
        valid: list[int] = []
        for i, req in enumerate(requests):
            try:
                check_request(req, self.spec)
                valid.append(i)
            except ValueError as exc:
                results[i] = exc
        if valid:
            for chunk in self._chunks([requests[i] for i in valid], valid):
                outs: list[np.ndarray | Exception]
                try:
                    outs = list(self._run([requests[i] for i in chunk]))
                except Exception as exc:  # the merged run failed (e.g. out of memory): isolate the culprit
                    outs = [exc] if len(chunk) == 1 else [self._run_alone(requests[i]) for i in chunk]
                for i, out in zip(chunk, outs, strict=True):
                    results[i] = out
        return [r if r is not None else RuntimeError("not run") for r in results]

    def _chunks(self, requests: Sequence[VlmRequest], index: Sequence[int]) -> list[list[int]]:
        """Consecutive requests whose padded batch (rows x longest row) and patches stay in budget.

        The gateway batcher already packs each request under the token budget; this bounds what Triton's
        dynamic batcher merges from several gateway processes."""
        chunks: list[list[int]] = []
        rows = width = patches = 0
        for i, req in zip(index, requests, strict=True):
            n, w, p = req.n_items, int(req.lengths.max()), len(req.pixel_values)
            padded = (rows + n) * max(width, w)
            if chunks and padded <= self.max_batch_tokens and patches + p <= self.spec.max_patches:
                chunks[-1].append(i)
                rows, width, patches = rows + n, max(width, w), patches + p
            else:
                chunks.append([i])
                rows, width, patches = n, w, p
        return chunks

    def _run_alone(self, request: VlmRequest) -> np.ndarray | Exception:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        try:
            return self._run([request])[0]
        except Exception as exc:
            return exc

    def _run(self, requests: Sequence[VlmRequest]) -> list[np.ndarray]:
        batch = assemble(requests, self.padding_side, self.pad_token_id)
        with self._lock:
            try:
                vectors = self.forward(batch).cpu().numpy()
            finally:
                if hasattr(self.model, "rope_deltas"):
                    self.model.rope_deltas = None  # never read here; cleared so no other caller sees ours
        offsets = np.cumsum([0, *batch.rows])
        return [vectors[a:b] for a, b in itertools.pairwise(offsets)]


def _params(config: dict[str, Any]) -> dict[str, str]:
    return {k: v["string_value"] for k, v in config.get("parameters", {}).items()}


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


class TritonPythonModel:
    """Triton entry point: parameters from config.pbtxt, one response per request."""

    def initialize(self, args: dict[str, str]) -> None:
        import triton_python_backend_utils as pb_utils

        self.pb = pb_utils
        config = json.loads(args["model_config"])
        params = _params(config)
        device = params.get("device", "cuda")
        if device == "cpu":  # idle OpenMP threads spin: a tiny backbone burnt 2x the CPU on 2 threads
            torch.set_num_threads(int(params.get("threads", "1")))
        if device == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError("vlm engine: CUDA is not available in the python-backend stub")
            device = f"cuda:{args.get('model_instance_device_id', '0')}"
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        self.engine = VlmEngine.load(
            os.path.join(version_dir, params.get("model_dir", "hf")),
            device=device,
            dtype=params.get("dtype", "bfloat16"),
            attn_implementation=params.get("attn_implementation", "sdpa"),
            padding_side=params.get("padding_side", "left"),
            max_seq_length=int(params.get("max_seq_length", "32768")),
            max_patches=int(params.get("max_patches", str(1 << 20))),
            max_batch_tokens=int(params.get("max_batch_tokens", str(1 << 16))),
            image_mean=_floats(params["image_mean"]) if "image_mean" in params else None,
            image_std=_floats(params["image_std"]) if "image_std" in params else None,
            buckets=bk.BucketSet.parse(params["buckets"]) if params.get("buckets") else None,
        )
        if params.get("cuda_graphs", "false") == "true":
            self.engine.capture()

    def _error(self, text: str) -> Any:
        return self.pb.InferenceResponse(output_tensors=[], error=self.pb.TritonError(text))

    def execute(self, requests: list[Any]) -> list[Any]:
        parsed: list[VlmRequest | Exception] = []
        for request in requests:
            arrays: dict[str, np.ndarray | None] = {}
            for name in INPUT_NAMES:
                tensor = self.pb.get_input_tensor_by_name(request, name)
                arrays[name] = None if tensor is None else tensor.as_numpy()
            try:
                parsed.append(parse_request(arrays, self.engine.spec.patch_dim))
            except ValueError as exc:
                parsed.append(exc)
        good = [p for p in parsed if isinstance(p, VlmRequest)]
        try:
            outs = iter(self.engine.embed(good))
        except Exception as exc:  # the engine itself failed: every request hears why, the instance lives on
            return [self._error(f"vlm engine failed: {exc}") for _ in requests]
        responses = []
        for p in parsed:
            result = next(outs) if isinstance(p, VlmRequest) else p
            if isinstance(result, Exception):
                responses.append(self._error(f"invalid vlm request: {result}"))
                continue
            tensor = self.pb.Tensor(OUTPUT_NAME, result[None].astype(np.float32, copy=False))
            responses.append(self.pb.InferenceResponse(output_tensors=[tensor]))
        return responses

    def finalize(self) -> None:
        del self.engine  # the weights go with the last reference
