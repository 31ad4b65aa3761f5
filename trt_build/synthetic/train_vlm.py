"""Train vlm-shapes: a tiny Qwen2-VL (real architecture, compact Qwen2 vocabulary) with VLM2Vec's recipe.

VLM2Vec's recipe on the synthetic shapes: instruction-conditioned query -> target InfoNCE over in-batch
negatives, last-token pooling of the final-norm hidden state, one task per batch. Five tasks: text ->
image, image -> text, text -> video (clips of 4-8 frames whose shapes move left or right), attribute
question -> answer, and composed retrieval (reference image + "make it blue" / "move it to the left" /
"turn it into a star" -> target image). Held-out attribute combinations (shapes.py's fixed split) are
never trained on, not even as a composed-retrieval reference; bench/vlm_quality.py scores them.

What a from-scratch model this small needs beyond VLM2Vec's recipe (which LoRA-tunes a 2B model at
lr 5e-5), each measured on held-out R@1 (the report in metrics.json `recipe`): a learning rate of 3e-4
(at 1e-3 and above the vision tower never learns shape, even with a direct classification loss);
16 renders per combination instead of 4 (with 4 it memorises renders); groups of near duplicates
(hard negatives one attribute apart) only after 40% of the steps (from the start: a long plateau at
log(batch)); the composed-retrieval reference's own image as an extra negative (a gallery holds it).
The committed model had a second stage (`--init`): from the 8,000-step model, groups from the start whose
near duplicates differ in shape or texture only (the attributes of its held-out misses), 64 renders per
combination, text -> image weighted up, at a third of the learning rate.

Preprocessing here is transformers' PIL-backend Qwen2-VL image processor and its `get_rope_index`; the
gateway's numpy path is golden-tested equal to them, so the saved folder serves through
services/media/qwen2vl.py + trt_build/vlm_model.py unchanged. Deterministic for a seed; one CPU thread.

    nice -n 19 python -m trt_build.synthetic.train_vlm --out /tmp/stage1 --threads 2
    nice -n 19 python -m trt_build.synthetic.train_vlm --init /tmp/stage1 --out trt_build/assets/vlm-shapes \
        --steps 2400 --lr 1e-4 --group-from 0 --renders 64 --near shape,texture \
        --task-weights t2i:3,i2t:2,qa:2,cir:2 --threads 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import random
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from trt_build.qwen_tokenizer import compact_tokenizer, special_tokens, tokenizer_config
from trt_build.synthetic import shapes
from trt_build.vlm_model import Batch, TokenSpec, VlmRequest, assemble, backbone_forward, linear_patch_embed
from trt_build.vlm_random import redraw

IMAGE_SIDE = 56  # 64 px renders -> 56 px: 4 x 4 patches, 2 x 2 merged tokens (112 px: 2x the time, no better)
VIDEO_SIDE = 56  # clip frames -> 56 px: 4 visual tokens per frame pair, 16 for an 8-frame clip
FRAMES = (4, 6, 8)
EVAL_FRAMES = 8
RENDERS_PER_COMBINATION = 16  # training renders per combination (jitter, sizes, background); memoized
TEMPERATURE = 0.05
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TASKS = ("t2i", "i2t", "t2v", "qa", "cir")

# Short runs (no video task) that decided the recipe: held-out R@1 text -> image / composed (reference
# held out too), steps, seconds per step on this machine; 56 px, lr 1e-3, groups from step 0 unless named.
EXPERIMENTS = {
    "112 px (e2, 400 steps, 1.1-1.3 s/step)": "t2i 0.148, cir 0.052",
    "56 px (e3, 400 steps, 0.57 s/step)": "t2i 0.179, cir 0.124",
    "56 px, temperature 0.02 (e5)": "t2i 0.198, cir 0.132: a tie with 0.05",
    "56 px, no groups (e6)": "t2i 0.216, cir 0.180: groups from the start stall learning",
    "lr 3e-3 (e4)": "t2i 0.040, cir 0.056",
    "symmetric loss (e7)": "collapsed (loss = log 48 from step 100)",
    "lr 1e-3, 2000 steps, groups from 40% (e8)": "t2i 0.312, cir 0.192, QA colour 0.19",
    "vision tower + linear head, shape classification, 400 steps": "lr 1e-3: loss stays log 6; "
    "1e-4: held-out 0.55 (4 renders per combination), 0.68 (fresh renders)",
    "lr 1e-4, 16 renders, groups from 40%, 600 steps (e10)": "t2i 0.420, cir 0.252",
    "lr 3e-4, 16 renders, groups from 40%, 600 steps (e11)": "t2i 0.565, cir 0.444",
    "this recipe with video, 600 steps, 56 px vs 112 px (2026-12-01; bench/vlm_quality.py)": "56 px: t2i "
    "0.608, cir 0.388, QA shape 0.20; 112 px: t2i 0.358, cir 0.160, QA shape 0.14 (1.9x the time a step): "
    "resolution is not what holds shape back",
    "this recipe, 3,200 vs 8,000 steps (cosine over the run; bench/vlm_quality.py)": "3,200: t2i 0.747, "
    "i2t 0.738, t2v 0.812, cir 0.600, QA 0.758 (shape 0.22, texture 0.40); 8,000: t2i 0.827, i2t 0.846, "
    "t2v 0.895, cir 0.744, QA 0.852 (shape 0.40, texture 0.76)",
    "second stage from the 8,000-step model (2026-12-01, after 45 of its 56 held-out text -> image misses "
    "were a wrong shape; one run)": "2,400 steps, lr 1e-4, groups from the start whose near duplicates "
    "differ in shape or texture only, 64 renders per combination, t2i:3,i2t:2,qa:2,cir:2: t2i 0.904, i2t "
    "0.914, t2v 0.929, cir 0.816, cir_any 0.855, QA 0.878 (shape 0.51, texture 0.81)",
}

# VLM2Vec's strings (templates.md section 2) in the V2-eval form the registry's `vlm2vec` preset uses
# ("\n" after the placeholder, a trailing "\n" on image tasks): served prompts equal trained ones.
T2I_QUERY = "Find me an everyday image that matches the given caption: {text}"
IMAGE_TARGET = "<|image_pad|>\nRepresent the given image.\n"
I2T_QUERY = "<|image_pad|>\nFind an image caption describing the given everyday image.\n"
T2V_QUERY = "Find a video that contains the following visual content: {text}"
VIDEO_TARGET = "<|video_pad|> Understand the content of the provided video."
QA_QUERY = "<|image_pad|>\nRepresent the given image with the following question: {text}\n"
CIR_QUERY = (
    "<|image_pad|>\nGiven an image, find a similar everyday image with the described changes: {text}\n"
)
QUESTIONS = {
    "colour": "What colour is the shape?",
    "shape": "What shape is it?",
    "size": "How big is the shape?",
    "texture": "What is the texture of the shape?",
    "count": "How many shapes are there?",
    "position": "Where is the shape?",
}
VALUES: dict[str, tuple[Any, ...]] = {
    "shape": shapes.SHAPES,
    "colour": tuple(shapes.COLOURS),
    "size": tuple(shapes.SIZES),
    "texture": shapes.TEXTURES,
    "count": shapes.COUNTS,
    "position": tuple(shapes.POSITIONS),
}
COUNT_ANSWERS = {1: "one", 2: "two", 3: "three"}
MOVES = {
    "on the left": "move it to the left",
    "on the right": "move it to the right",
    "at the top": "move it to the top",
    "at the bottom": "move it to the bottom",
    "in the middle": "move it to the middle",
}
EDITS = ("colour", "position", "shape")  # what a composed-retrieval text may change
DIRECTIONS = {"right": 16.0, "left": -16.0}  # shapes.video_frames travel in pixels


def answer(attrs: shapes.Attributes, attribute: str) -> str:
    value = getattr(attrs, attribute)
    return COUNT_ANSWERS[value] if attribute == "count" else str(value)


def answers(attribute: str) -> list[str]:
    return [COUNT_ANSWERS[v] if attribute == "count" else str(v) for v in VALUES[attribute]]


def video_caption(attrs: shapes.Attributes, direction: str) -> str:
    return f"{attrs.caption}, moving {direction}"


def edit_text(kind: str, value: str) -> str:
    """The modification text of composed retrieval."""
    return {
        "colour": f"make it {value}",
        "position": MOVES.get(value, ""),
        "shape": f"turn it into a {value}",
    }[kind]


def changed(attrs: shapes.Attributes, attribute: str, value: Any) -> shapes.Attributes:
    return dataclasses.replace(attrs, **{attribute: value})


def neighbours(
    attrs: shapes.Attributes, attributes: Sequence[str] = tuple(VALUES)
) -> list[shapes.Attributes]:
    """Every combination that differs from `attrs` in exactly one of `attributes`."""
    return [changed(attrs, a, v) for a in attributes for v in VALUES[a] if v != getattr(attrs, a)]


Render = tuple[shapes.Attributes, int]  # attributes and render seed: one image, memoized once processed


@dataclass(frozen=True)
class Clip:
    """A moving-shape clip, rendered on demand (frames are not memoized: too many distinct ones)."""

    attrs: shapes.Attributes
    seed: int
    frames: int
    direction: str

    def images(self) -> list[Image.Image]:
        return shapes.video_frames(
            self.attrs, self.seed, frames=self.frames, travel=DIRECTIONS[self.direction]
        )


@dataclass(frozen=True)
class Item:
    """One side of a pair before preprocessing: prompt template, text, images or one clip."""

    template: str
    text: str = ""
    images: tuple[Render, ...] = ()
    clip: Clip | None = None

    @property
    def prompt(self) -> str:
        return self.template.format(text=self.text)


class Preprocessor:
    """transformers' PIL-backend processor + rope index + the compact tokenizer -> engine batches.

    Memoizes each render's patches (one temporal copy: the processor repeats a still image over the
    temporal patch, so the second copy is rebuilt exactly) and each prompt's ids and positions."""

    def __init__(
        self, tokenizer: Any, model: Any, image_side: int = IMAGE_SIDE, video_side: int = VIDEO_SIDE
    ) -> None:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        def processor(side: int) -> Any:
            pixels = side * side
            return Qwen2VLImageProcessorPil(
                min_pixels=pixels, max_pixels=pixels, image_mean=CLIP_MEAN, image_std=CLIP_STD
            )

        self.image_side, self.video_side = image_side, video_side
        self.images, self.frames = processor(image_side), processor(video_side)
        self.tok = tokenizer
        self.model = model
        self._renders: dict[Render, tuple[np.ndarray, np.ndarray]] = {}
        self._texts: dict[tuple[str, bytes], tuple[np.ndarray, np.ndarray]] = {}
        config = model.config
        self.spec = TokenSpec(
            image_token_id=config.image_token_id,
            video_token_id=config.video_token_id,
            merge_size=2,
            patch_dim=1176,
            vocab_size=config.text_config.vocab_size,
        )

    @staticmethod
    def _frame_patches(processor: Any, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        """[frames, n, 3, 14, 14] (each frame's first temporal copy) and the grid of one frame."""
        out = processor(images=list(images), return_tensors="np")
        grid = out["image_grid_thw"][0]
        n = int(grid.prod())
        return out["pixel_values"].reshape(len(images), n, 3, 2, 14, 14)[:, :, :, 0], grid

    def _render_patches(self, renders: Sequence[Render]) -> tuple[np.ndarray, np.ndarray]:
        parts = []
        for render in renders:
            if render not in self._renders:
                frame, grid = self._frame_patches(self.images, [shapes.render(*render)])
                self._renders[render] = frame[0], grid
            frame, grid = self._renders[render]
            parts.append((np.repeat(frame[:, :, None], 2, axis=2).reshape(len(frame), -1), grid))
        return np.concatenate([p for p, _ in parts]), np.stack([g for _, g in parts])

    def _clip_patches(self, clip: Clip) -> tuple[np.ndarray, np.ndarray]:
        """Frame pairs share a temporal patch: each frame keeps its own slot of the time axis."""
        frames = clip.images()
        per, grid = self._frame_patches(self.frames, frames)
        pairs = per.reshape(len(frames) // 2, 2, *per.shape[1:]).transpose(0, 2, 3, 1, 4, 5)
        return pairs.reshape(-1, 3 * 2 * 14 * 14), np.array([[len(frames) // 2, *grid[1:]]])

    def _text(self, prompt: str, token: str, kind: str, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        key = (prompt, grid.tobytes())
        if key not in self._texts:
            pieces = prompt.split(token) if token else [prompt]
            counts = [int(g.prod()) // 4 for g in grid]
            text = pieces[0] + "".join(token * c + p for c, p in zip(counts, pieces[1:], strict=True))
            ids = np.array(self.tok.encode(text).ids, dtype=np.int64)
            spec = self.spec
            types = np.where(ids == spec.image_token_id, 1, np.where(ids == spec.video_token_id, 2, 0))
            if kind:
                pos, _ = self.model.model.get_rope_index(
                    torch.from_numpy(ids)[None],
                    mm_token_type_ids=torch.from_numpy(types)[None],
                    **{kind: torch.from_numpy(np.asarray(grid, dtype=np.int64))},
                )
                positions = pos[:, 0].numpy()
            else:
                positions = np.tile(np.arange(len(ids)), (3, 1))
            self._texts[key] = ids, positions
        return self._texts[key]

    def request(self, item: Item) -> VlmRequest:
        if item.clip is not None:
            pixels, grid = self._clip_patches(item.clip)
            token, kind = "<|video_pad|>", "video_grid_thw"
        elif item.images:
            pixels, grid = self._render_patches(item.images)
            token, kind = "<|image_pad|>", "image_grid_thw"
        else:
            pixels, grid, token, kind = np.zeros((0, 1176), np.float32), np.zeros((0, 3), np.int64), "", ""
        ids, positions = self._text(item.prompt, token, kind, np.asarray(grid, dtype=np.int64))
        return VlmRequest(ids, np.array([len(ids)]), positions, pixels.astype(np.float32), np.asarray(grid))

    def batch(self, items: Sequence[Item]) -> Batch:
        return assemble([self.request(i) for i in items], "left", 0)


def _batched_vision_attention(
    self: Any, hidden_states: torch.Tensor, cu_seqlens: torch.Tensor, position_embeddings: Any, **kwargs: Any
) -> torch.Tensor:
    """VisionAttention with equal-length slices (one image size per batch) as one batched SDPA call
    instead of HF's loop of one call per image; any other batch takes HF's own path."""
    from transformers.models.qwen2_vl.modeling_qwen2_vl import apply_rotary_pos_emb_vision

    lengths = cu_seqlens.diff()
    if int(lengths.min()) != int(lengths.max()):
        return type(self).forward(self, hidden_states, cu_seqlens, position_embeddings, **kwargs)
    total, heads = hidden_states.shape[0], self.num_heads
    q, k, v = self.qkv(hidden_states).reshape(total, 3, heads, -1).permute(1, 0, 2, 3).unbind(0)
    q, k = apply_rotary_pos_emb_vision(q, k, *position_embeddings)
    q, k, v = (x.reshape(len(lengths), -1, heads, x.shape[-1]).transpose(1, 2) for x in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, scale=self.scaling)
    return self.proj(out.transpose(1, 2).reshape(total, -1))


def fast_training_kernels(model: Any) -> Any:
    """Same math, fewer and larger CPU ops, for this model object only (the saved weights and the
    served engine are untouched; tests check both paths give the same vectors)."""
    visual = model.model.visual
    linear_patch_embed(visual)
    for block in visual.blocks:
        block.attn.forward = types.MethodType(_batched_vision_attention, block.attn)
    return model


def encode(model: Any, prep: Preprocessor, items: Sequence[Item], chunk: int = 64) -> torch.Tensor:
    return torch.cat(
        [
            backbone_forward(
                model.model, prep.batch(items[i : i + chunk]), prep.spec, torch.device("cpu"), torch.float32
            )
            for i in range(0, len(items), chunk)
        ]
    )


def info_nce(
    q: torch.Tensor, t: torch.Tensor, keys: Sequence[str], temperature: float, symmetric: bool = False
) -> torch.Tensor:
    """Query i -> target i InfoNCE over every target (those past len(q) are negatives only); a target
    equal to query i's own (same key) is not its negative. `symmetric` adds target i -> query i."""
    logits = q @ t.T / temperature
    index: dict[str, int] = {}
    ids = torch.tensor([index.setdefault(k, len(index)) for k in keys])
    n = len(q)
    same = (ids[:n, None] == ids[None, :]) & ~torch.eye(n, len(keys), dtype=torch.bool)
    labels = torch.arange(n)
    loss = F.cross_entropy(logits.masked_fill(same, float("-inf")), labels)
    if symmetric:
        back = logits[:, :n].T.masked_fill(same[:, :n], float("-inf"))
        loss = (loss + F.cross_entropy(back, labels)) / 2
    return loss


# queries, targets (any past the queries' count are extra negatives), target keys (equal: same target)
Pairs = tuple[list[Item], list[Item], list[str]]


class Sampler:
    """Training pairs from the training combinations only, in groups of near duplicates.

    A group is a combination and `group - 1` of its one-attribute neighbours (composed retrieval: two
    neighbouring references x two edits), so the in-batch negatives include ones that differ in a
    single attribute: random batches of 48 out of 2,592 combinations almost never hold such a pair, and
    the held-out set (324 combinations) has about two per combination."""

    def __init__(
        self,
        combos: Sequence[shapes.Attributes],
        group: int,
        renders: int = RENDERS_PER_COMBINATION,
        near: Sequence[str] = tuple(VALUES),
    ) -> None:
        self.combos = list(combos)
        self.allowed = set(combos)
        self.group = group
        self.renders = renders  # distinct training renders per combination
        self.near = tuple(near)  # the attributes a group's near duplicates differ in

    def _near(self, attrs: shapes.Attributes, rng: random.Random, k: int) -> list[shapes.Attributes]:
        near = [a for a in neighbours(attrs, self.near) if a in self.allowed]
        return rng.sample(near, min(k, len(near)))

    def groups(self, n: int, rng: random.Random) -> list[shapes.Attributes]:
        out: list[shapes.Attributes] = []
        while len(out) < n:
            base = rng.choice(self.combos)
            out += [base, *self._near(base, rng, self.group - 1)]
        return out[:n]

    def _edit(self, ref: shapes.Attributes, rng: random.Random) -> tuple[str, Any]:
        kind = rng.choice(EDITS)
        return kind, rng.choice([v for v in VALUES[kind] if v != getattr(ref, kind)])

    def cir(self, n: int, rng: random.Random) -> list[tuple[shapes.Attributes, str, shapes.Attributes]]:
        """(reference, edit text, target), reference and target both training combinations."""
        out: list[tuple[shapes.Attributes, str, shapes.Attributes]] = []
        while len(out) < n:
            ref = rng.choice(self.combos)
            refs = [ref, *self._near(ref, rng, 1)] if self.group > 1 else [ref]
            edits = [self._edit(ref, rng) for _ in range(2 if self.group > 1 else 1)]
            for r in refs:
                for kind, value in edits:
                    target = changed(r, kind, value)
                    if target != r and target in self.allowed:
                        out.append((r, edit_text(kind, value), target))
        return out[:n]

    def pairs(self, task: str, n: int, rng: random.Random) -> Pairs:
        """n (query, target, target key) for one task; renders are seeded from `rng`."""

        def seed() -> int:
            return rng.randrange(self.renders)

        if task == "cir":  # the references' own images are extra negatives: a gallery holds them
            triples = self.cir(n, rng)
            refs = sorted({ref for ref, _, _ in triples}, key=lambda a: a.caption)
            return (
                [Item(CIR_QUERY, text, images=((ref, seed()),)) for ref, text, _ in triples],
                [Item(IMAGE_TARGET, images=((a, seed()),)) for a in [t for *_, t in triples] + refs],
                [t.caption for *_, t in triples] + [a.caption for a in refs],
            )
        combos = self.groups(n, rng)
        if task == "t2i":
            return (
                [Item(T2I_QUERY, a.caption) for a in combos],
                [Item(IMAGE_TARGET, images=((a, seed()),)) for a in combos],
                [a.caption for a in combos],
            )
        if task == "i2t":
            return (
                [Item(I2T_QUERY, images=((a, seed()),)) for a in combos],
                [Item("{text}", a.caption) for a in combos],
                [a.caption for a in combos],
            )
        if task == "t2v":
            clips = [Clip(a, seed(), rng.choice(FRAMES), rng.choice(sorted(DIRECTIONS))) for a in combos]
            captions = [video_caption(c.attrs, c.direction) for c in clips]
            return (
                [Item(T2V_QUERY, c) for c in captions],
                [Item(VIDEO_TARGET, clip=c) for c in clips],
                captions,
            )
        if task == "qa":  # one attribute per batch: its other answers are the negatives, as in evaluation
            attribute = rng.choice(sorted(QUESTIONS))
            labels = [answer(a, attribute) for a in combos]
            return (
                [Item(QA_QUERY, QUESTIONS[attribute], images=((a, seed()),)) for a in combos],
                [Item("{text}", label) for label in labels],
                labels,
            )
        raise ValueError(f"unknown task {task!r}")


@torch.no_grad()
def watch_t2i(model: Any, prep: Preprocessor) -> float:
    """Held-out text -> image R@1 during training (a curve to read, never a training signal)."""
    _, held = shapes.split_combinations()
    images = encode(
        model, prep, [Item(IMAGE_TARGET, images=((a, 1_000_000 + i),)) for i, a in enumerate(held)]
    )
    texts = encode(model, prep, [Item(T2I_QUERY, a.caption) for a in held])
    return round(float(((texts @ images.T).argmax(1) == torch.arange(len(held))).float().mean()), 4)


def corpus() -> list[str]:
    """Every prompt string the tasks can produce: the compact vocabulary must split them as Qwen2 does."""
    texts = [I2T_QUERY, IMAGE_TARGET, VIDEO_TARGET]
    for a in shapes.all_combinations():
        texts += [T2I_QUERY.format(text=a.caption), a.caption]
        texts += [T2V_QUERY.format(text=video_caption(a, d)) for d in DIRECTIONS]
    texts += [QA_QUERY.format(text=q) for q in QUESTIONS.values()]
    texts += [a for attr in QUESTIONS for a in answers(attr)]
    texts += [CIR_QUERY.format(text=edit_text(k, v)) for k in EDITS for v in VALUES[k]]
    return sorted(set(texts))


def build_model(tokenizer: Any, args: argparse.Namespace) -> Any:
    import transformers

    ids = {t: tokenizer.token_to_id(t) for _, t, _ in special_tokens("qwen2-vl")}
    head_dim = args.hidden // args.heads
    half = head_dim // 2
    config = transformers.Qwen2VLConfig(
        text_config={
            "vocab_size": tokenizer.get_vocab_size(),
            "hidden_size": args.hidden,
            "intermediate_size": args.hidden * 3,
            "num_hidden_layers": args.layers,
            "num_attention_heads": args.heads,
            "num_key_value_heads": max(1, args.heads // 2),
            "max_position_embeddings": 1024,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [half // 2, half // 4, half // 4],
            },
            "tie_word_embeddings": True,
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": args.vision_depth,
            "embed_dim": args.vision_width,
            "hidden_size": args.hidden,
            "num_heads": max(1, args.vision_width // 32),
            "mlp_ratio": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(args.seed)
    model = transformers.Qwen2VLForConditionalGeneration(config)
    # HF's std-0.02 init starts every image target at the same vector (the image barely reaches the
    # pooled token; measured: the composed-retrieval loss sat at log(batch)); unit-scale layers do not
    redraw(model, args.seed)
    return model


def initial_model(tokenizer: Any, args: argparse.Namespace) -> Any:
    """A fresh model (`build_model`), or with `--init` a saved one to train further (a second stage: the
    folder must hold the same compact vocabulary, which `corpus()` fixes)."""
    if not args.init:
        return build_model(tokenizer, args)
    import transformers
    from tokenizers import Tokenizer

    saved = Tokenizer.from_file(str(Path(args.init) / "tokenizer.json"))
    if saved.get_vocab() != tokenizer.get_vocab():
        raise SystemExit(f"{args.init}: its vocabulary is not this trainer's compact one")
    return transformers.Qwen2VLForConditionalGeneration.from_pretrained(args.init)


def _describe_init(folder: Path) -> dict[str, Any]:
    """What a second stage started from: the first stage's recipe and steps, from its metrics.json."""
    metrics = folder / "metrics.json"
    if not metrics.exists():
        return {"folder": str(folder)}
    first = json.loads(metrics.read_text())
    return {
        "recipe": {k: v for k, v in first.get("recipe", {}).items() if k != "decided by"},
        "train": {k: v for k, v in first.get("train", {}).items() if k != "history"},
        "held_out": {"vlm-shapes": first.get("held_out", {}).get("vlm-shapes")},
    }


def preprocessor_config(image_side: int = IMAGE_SIDE, video_side: int = VIDEO_SIDE) -> dict[str, Any]:
    """The folder's pixel contract: min = max pixels, so any image lands on the trained grid."""
    return {
        "image_processor_type": "Qwen2VLImageProcessor",
        "min_pixels": image_side * image_side,
        "max_pixels": image_side * image_side,
        "video_min_pixels": video_side * video_side,
        "video_max_pixels": video_side * video_side,
        "frames": EVAL_FRAMES,
        "patch_size": 14,
        "merge_size": 2,
        "temporal_patch_size": 2,
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
        "resample": 3,
    }


def schedule(args: argparse.Namespace) -> Callable[[int], float]:
    """Linear warm-up over 5% of the steps, then cosine to zero."""
    warmup = max(1, args.steps // 20)
    return lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps)))


def task_order(args: argparse.Namespace) -> list[str]:
    """Round-robin over the tasks, each repeated by its weight (`t2i:2,cir:2,...`)."""
    weights = dict(part.split(":") for part in args.task_weights.split(",")) if args.task_weights else {}
    return [t for t in TASKS for _ in range(int(weights.get(t, 1)))]


def save(model: Any, tokenizer: Any, out: Path, args: argparse.Namespace) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save(str(out / "tokenizer.json"))
    tok_cfg = tokenizer_config("qwen2-vl")
    tok_cfg["added_tokens_decoder"] = {
        str(tokenizer.token_to_id(v["content"])): v for v in tok_cfg["added_tokens_decoder"].values()
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")
    config = preprocessor_config(args.image_side, args.video_side)
    (out / "preprocessor_config.json").write_text(json.dumps(config, indent=2) + "\n")


def train(args: argparse.Namespace) -> tuple[Any, Preprocessor, dict[str, Any]]:
    """Train and save; returns the model, its preprocessor and the training record."""
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    load_at_start = round(os.getloadavg()[0], 2)
    t0 = time.perf_counter()
    tokenizer = compact_tokenizer(corpus())
    init = _describe_init(Path(args.init)) if args.init else None  # before --out may overwrite it
    model = fast_training_kernels(initial_model(tokenizer, args))
    prep = Preprocessor(tokenizer, model, args.image_side, args.video_side)
    train_combos, _ = shapes.split_combinations()
    sampler = Sampler(train_combos, args.group, args.renders, args.near.split(","))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule(args))
    order = task_order(args)
    history: list[dict[str, Any]] = []
    losses: dict[str, list[float]] = {t: [] for t in TASKS}
    model.train()
    t1 = time.perf_counter()
    steps_done = 0
    for step in range(args.steps):
        task = order[step % len(order)]
        rng = random.Random(args.seed * 1_000_003 + step)
        sampler.group = args.group if step >= args.group_from * args.steps else 1
        queries, targets, keys = sampler.pairs(task, args.batch, rng)
        q = encode(model, prep, queries, chunk=len(queries))
        t = encode(model, prep, targets, chunk=len(targets))
        loss = info_nce(q, t, keys, args.temperature, args.symmetric)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses[task].append(loss.item())
        steps_done = step + 1
        if steps_done % args.log_every == 0:
            mean = {k: round(sum(v[-10:]) / len(v[-10:]), 3) for k, v in losses.items() if v}
            row = {"step": steps_done, "loss": mean, "s": round(time.perf_counter() - t1, 1)}
            if args.watch and steps_done % (args.log_every * args.watch) == 0:
                row["held_out_t2i"] = watch_t2i(model, prep)
            print(json.dumps(row), flush=True)
            history.append(row)
        if time.perf_counter() - t1 > args.max_train_s:
            print(f"time cap {args.max_train_s}s reached after step {steps_done}", flush=True)
            break
    train_s = time.perf_counter() - t1
    model.eval()
    save(model, tokenizer, Path(args.out), args)
    record = {
        "recipe": {
            "loss": "query->target InfoNCE, in-batch negatives (duplicate targets masked)",
            "temperature": args.temperature,
            "pooling": "last token of the final-norm hidden state, L2-normalized, left padding",
            "tasks": order,
            "one task per batch": True,
            "symmetric": args.symmetric,
            "hard-negative group": args.group,
            "groups from step": round(args.group_from * args.steps),
            "image_side": args.image_side,
            "video_side": args.video_side,
            "renders per combination": args.renders,
            "near duplicates differ in": args.near,
            "initialised from": init,
            "decided by": EXPERIMENTS,
        },
        "train": {
            "steps": steps_done,
            "batch": args.batch,
            "lr": args.lr,
            "seed": args.seed,
            "model": {
                k: getattr(args, k) for k in ("hidden", "layers", "heads", "vision_width", "vision_depth")
            },
            "params": sum(p.numel() for p in model.parameters()),
            "vocab": tokenizer.get_vocab_size(),
            "train_s": round(train_s, 1),
            "total_s": round(time.perf_counter() - t0, 1),
            "history": history,
        },
        "machine": {
            "cpu_count": os.cpu_count(),
            "load_avg_1m_at_start": load_at_start,
            "torch_threads": args.threads,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }
    return model, prep, record


@dataclass(frozen=True)
class HeldOut:
    """Every held-out query and candidate, independent of the model that embeds them."""

    combos: list[shapes.Attributes]
    renders: list[Render]  # one image per combination
    clips: list[Clip]  # one 8-frame clip per combination
    cir: list[tuple[Render, str, int]]  # reference render, edit text, index of the target
    cir_any: list[tuple[Render, str, int]]


def held_out(seed: int = 0) -> HeldOut:
    _, combos = shapes.split_combinations()
    rng = random.Random(seed)
    renders = [(a, shapes.item_seed("held_out", i, seed)) for i, a in enumerate(combos)]
    directions = [rng.choice(sorted(DIRECTIONS)) for _ in combos]
    clips = [Clip(a, i, EVAL_FRAMES, d) for i, (a, d) in enumerate(zip(combos, directions, strict=True))]
    held = set(combos)
    cir, cir_any = [], []
    for i, (attrs, seed_i) in enumerate(renders):
        edits = [(k, v) for k in EDITS for v in VALUES[k] if v != getattr(attrs, k)]
        kind, value = rng.choice(edits)
        back = edit_text(kind, getattr(attrs, kind))
        cir_any.append(((changed(attrs, kind, value), seed_i + 7), back, i))
        unseen = [(k, v) for k, v in edits if changed(attrs, k, v) in held]
        if unseen:
            kind, value = rng.choice(unseen)
            cir.append(((changed(attrs, kind, value), seed_i + 7), edit_text(kind, getattr(attrs, kind)), i))
    return HeldOut(combos, renders, clips, cir, cir_any)


def load(folder: Path) -> tuple[Any, Preprocessor]:
    """A saved vlm-shapes folder as the trainer's model and preprocessor."""
    import transformers
    from tokenizers import Tokenizer

    pre = json.loads((folder / "preprocessor_config.json").read_text())
    model = transformers.Qwen2VLForConditionalGeneration.from_pretrained(folder).eval()
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    side = round(pre["max_pixels"] ** 0.5)
    return model, Preprocessor(tok, model, side, round(pre["video_max_pixels"] ** 0.5))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="trt_build/assets/vlm-shapes")
    p.add_argument("--steps", type=int, default=8000)
    p.add_argument("--batch", type=int, default=48)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--temperature", type=float, default=TEMPERATURE)
    p.add_argument("--symmetric", action="store_true", help="also target -> query (CLIP's two-way loss)")
    p.add_argument("--group", type=int, default=4, help="near-duplicate group size (1: random batches)")
    p.add_argument("--group-from", type=float, default=0.4, help="share of steps before groups start")
    p.add_argument("--task-weights", default="t2i:2,qa:2,cir:2", help="steps per round, default 1 a task")
    p.add_argument("--renders", type=int, default=RENDERS_PER_COMBINATION, help="renders per combination")
    p.add_argument("--near", default=",".join(VALUES), help="attributes a group's near duplicates differ in")
    p.add_argument("--init", help="a saved vlm-shapes folder to train further (a second stage)")
    p.add_argument("--image-side", type=int, default=IMAGE_SIDE)
    p.add_argument("--video-side", type=int, default=VIDEO_SIDE)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vision-width", type=int, default=128)
    p.add_argument("--vision-depth", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    # one thread: on 2 cores shared with other work, two threads made each step 5-10x slower (every op
    # waits for both threads at its barrier); results are deterministic either way
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--watch", type=int, default=4, help="held-out t2i every N logs (0: never)")
    p.add_argument("--max-train-s", type=float, default=7200.0, help="safety stop (breaks determinism)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    _, _, record = train(args)
    out = Path(args.out)
    (out / "train.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"trained; score it: python bench/vlm_quality.py {out}", flush=True)


if __name__ == "__main__":
    main()
