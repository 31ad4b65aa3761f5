"""Deterministic synthetic captioned images (and tiny videos) of coloured shapes.

Every item is a set of attributes (shape, colour, size, texture, count, position) rendered with Pillow
and described by a caption generated from the same attributes, so retrieval quality can be measured
honestly: the held-out split is a fixed set of attribute *combinations* never seen in training, and
each held-out combination appears exactly once, so its caption identifies one image.
Same seed and index -> same pixels, on any machine (Pillow's rasteriser is integer-exact).
"""

from __future__ import annotations

import io
import itertools
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64

SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 220),
    "yellow": (235, 215, 30),
    "purple": (140, 40, 180),
    "orange": (245, 130, 20),
}
SIZES: dict[str, tuple[int, int]] = {"small": (9, 11), "large": (16, 19)}  # side in pixels at 64x64
TEXTURES = ("solid", "striped", "dotted")
COUNTS = (1, 2, 3)
POSITIONS: dict[str, tuple[int, int, int, int]] = {  # region boxes (x0, y0, x1, y1) at 64x64
    "on the left": (0, 0, 32, 64),
    "on the right": (32, 0, 64, 64),
    "at the top": (0, 0, 64, 32),
    "at the bottom": (0, 32, 64, 64),
    "in the middle": (0, 16, 64, 48),
}
COUNT_WORDS = {1: "a", 2: "two", 3: "three"}
BACKGROUNDS = ((235, 235, 235), (200, 200, 200), (240, 230, 210))

HELD_OUT_FRACTION = 0.1
SPLIT_SEED = 1234  # fixes which combinations are held out; never change it without retraining


@dataclass(frozen=True)
class Attributes:
    shape: str
    colour: str
    size: str
    texture: str
    count: int
    position: str

    @property
    def caption(self) -> str:
        noun = self.shape if self.count == 1 else _plural(self.shape)
        return f"{COUNT_WORDS[self.count]} {self.size} {self.colour} {self.texture} {noun} {self.position}"


@dataclass(frozen=True)
class Item:
    attrs: Attributes
    image: Image.Image  # RGB, IMAGE_SIZE x IMAGE_SIZE

    @property
    def caption(self) -> str:
        return self.attrs.caption


def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("s") else "s")


def all_combinations() -> list[Attributes]:
    """Every attribute combination, in a fixed order."""
    return [
        Attributes(s, c, z, t, n, p)
        for s, c, z, t, n, p in itertools.product(SHAPES, COLOURS, SIZES, TEXTURES, COUNTS, POSITIONS)
    ]


def split_combinations() -> tuple[list[Attributes], list[Attributes]]:
    """The fixed (train, held-out) split of combinations: held-out combinations are never trained on."""
    combos = all_combinations()
    order = list(range(len(combos)))
    random.Random(SPLIT_SEED).shuffle(order)
    n_held = round(len(combos) * HELD_OUT_FRACTION)
    held = sorted(order[:n_held])
    train = sorted(order[n_held:])
    return [combos[i] for i in train], [combos[i] for i in held]


def _shape_polygon(
    shape: str, cx: float, cy: float, r: float, angle: float = 0.0
) -> list[tuple[float, float]]:
    """Vertices of a shape of half-size r around (cx, cy); circles are handled by the caller."""

    def ring(n: int, radii: Sequence[float], start: float) -> list[tuple[float, float]]:
        pts = []
        for k in range(n):
            a = start + angle + 2 * math.pi * k / n
            rad = radii[k % len(radii)]
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        return pts

    if shape == "square":
        return ring(4, [r * math.sqrt(2)], math.pi / 4)
    if shape == "diamond":
        return ring(4, [r * 1.15], -math.pi / 2)
    if shape == "triangle":
        return ring(3, [r * 1.2], -math.pi / 2)
    if shape == "star":
        return ring(10, [r * 1.25, r * 0.5], -math.pi / 2)
    if shape == "cross":
        a, b = r, r * 0.38
        return [
            (cx - b, cy - a),
            (cx + b, cy - a),
            (cx + b, cy - b),
            (cx + a, cy - b),
            (cx + a, cy + b),
            (cx + b, cy + b),
            (cx + b, cy + a),
            (cx - b, cy + a),
            (cx - b, cy + b),
            (cx - a, cy + b),
            (cx - a, cy - b),
            (cx - b, cy - b),
        ]
    raise ValueError(f"unknown shape {shape!r}")


def _texture(colour: tuple[int, int, int], texture: str, size: int, phase: int) -> Image.Image:
    """A fill image: plain colour, white stripes, or a white dot grid (period 4 px)."""
    fill = Image.new("RGB", (size, size), colour)
    if texture == "solid":
        return fill
    draw = ImageDraw.Draw(fill)
    if texture == "striped":
        for y in range(phase % 4, size, 4):
            draw.line([(0, y), (size, y)], fill=(255, 255, 255), width=1)
    elif texture == "dotted":
        for y in range(phase % 4, size, 4):
            for x in range(phase % 4, size, 4):
                draw.point((x, y), fill=(255, 255, 255))
    else:
        raise ValueError(f"unknown texture {texture!r}")
    return fill


def _draw_shape(
    img: Image.Image, attrs: Attributes, cx: float, cy: float, r: float, rng: random.Random
) -> None:
    mask = Image.new("L", img.size, 0)
    mdraw = ImageDraw.Draw(mask)
    if attrs.shape == "circle":
        mdraw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        mdraw.polygon(_shape_polygon(attrs.shape, cx, cy, r, angle=rng.uniform(-0.15, 0.15)), fill=255)
    img.paste(_texture(COLOURS[attrs.colour], attrs.texture, img.size[0], rng.randrange(4)), (0, 0), mask)


def render(attrs: Attributes, seed: int, *, centre_offset: tuple[float, float] = (0.0, 0.0)) -> Image.Image:
    """Render one image of `attrs`; `seed` picks background, jitter and exact sizes deterministically.

    `centre_offset` (pixels) shifts the whole group; the video generator uses it to move shapes.
    """
    rng = random.Random(seed)
    img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), rng.choice(BACKGROUNDS))
    x0, y0, x1, y1 = POSITIONS[attrs.position]
    horizontal = (x1 - x0) >= (y1 - y0)
    lo, hi = SIZES[attrs.size]
    for k in range(attrs.count):
        side = rng.randint(lo, hi)
        if horizontal:
            cell = (x1 - x0) / attrs.count
            cx, cy = x0 + cell * (k + 0.5), (y0 + y1) / 2
        else:
            cell = (y1 - y0) / attrs.count
            cx, cy = (x0 + x1) / 2, y0 + cell * (k + 0.5)
        cx += rng.uniform(-2.5, 2.5) + centre_offset[0]
        cy += rng.uniform(-2.5, 2.5) + centre_offset[1]
        _draw_shape(img, attrs, cx, cy, side / 2, rng)
    return img


def item_seed(split: str, index: int, base_seed: int) -> int:
    """Independent, reproducible per-item seeds for each split."""
    return (base_seed * 1_000_003 + index) * 2 + (split == "held_out")


def train_items(n: int, seed: int = 0) -> Iterator[Item]:
    """`n` training items cycling over the training combinations (each combination ~n/len times)."""
    train, _ = split_combinations()
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    for i in range(n):
        attrs = train[order[i % len(order)]]
        yield Item(attrs, render(attrs, item_seed("train", i, seed)))


def held_out_items(seed: int = 0) -> list[Item]:
    """One item per held-out combination: captions are unique, so text->image recall is well defined."""
    _, held = split_combinations()
    return [Item(a, render(a, item_seed("held_out", i, seed))) for i, a in enumerate(held)]


def to_uint8(items: Sequence[Item]) -> np.ndarray:
    """Stack items into an (N, H, W, 3) uint8 array."""
    return np.stack([np.asarray(it.image, dtype=np.uint8) for it in items])


def video_frames(
    attrs: Attributes, seed: int = 0, *, frames: int = 16, travel: float = 16.0
) -> list[Image.Image]:
    """Frames of `attrs` whose shapes slide `travel` pixels left to right across the clip."""
    return [
        render(attrs, seed, centre_offset=(travel * (k / max(frames - 1, 1) - 0.5), 0.0))
        for k in range(frames)
    ]


def render_video(
    attrs: Attributes,
    seed: int = 0,
    *,
    frames: int = 16,
    fps: int = 8,
    travel: float = 16.0,
    codec: str = "mpeg4",
    path: str | Path | None = None,
) -> bytes:
    """A tiny mp4 of `video_frames(attrs, ...)`: text->video retrieval is scored with `attrs.caption`.

    Returns the file bytes (also written to `path` when given). `codec` must be one the installed
    PyAV can encode (mpeg4 always is; libx264 when FFmpeg was built with it).
    """
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        if not isinstance(stream, av.VideoStream):
            raise ValueError(f"{codec!r} is not a video codec")
        stream.width = stream.height = IMAGE_SIZE
        stream.pix_fmt = "yuv420p"
        stream.options = {"qscale": "2"} if codec == "mpeg4" else {}
        for img in video_frames(attrs, seed, frames=frames, travel=travel):
            for packet in stream.encode(av.VideoFrame.from_image(img)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = buf.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data
