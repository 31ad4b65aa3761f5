"""Image decoding under limits: every hostile input is a clear 4xx, good input is deterministic."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from services.config import Settings
from services.errors import InvalidInput, PayloadTooLarge, Unprocessable, UnsupportedMedia
from services.media.images import (
    RemoteMedia,
    decode_image,
    decode_inline,
    open_image,
    parse_image_field,
    preprocess,
)
from services.registry import Image as ImageSpec

SPEC = ImageSpec(size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


@pytest.fixture
def settings() -> Settings:
    return Settings(max_image_bytes=1 << 20, max_image_pixels=4_000_000)


def encode(img: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def gradient(w: int = 48, h: int = 40) -> Image.Image:
    x = np.zeros((h, w, 3), dtype=np.uint8)
    x[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    x[..., 1] = np.linspace(0, 255, h, dtype=np.uint8)[:, None]
    return Image.fromarray(x)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height but holds (almost) no pixel data: a decompression bomb."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("side", [3_000, 100_000])  # above our limit; above Pillow's own bomb limit too
def test_decompression_bomb_refused_before_decoding(settings: Settings, side: int) -> None:
    data = png_header_only(side, side)
    assert len(data) < 200
    with pytest.raises(PayloadTooLarge) as exc:
        decode_image(data, settings, SPEC, field="inputs[3].image")
    assert exc.value.status == 413 and exc.value.field == "inputs[3].image"


def test_truncated_png_is_422(settings: Settings) -> None:
    data = encode(gradient(200, 200))
    with pytest.raises(Unprocessable) as exc:
        decode_image(data[: len(data) // 2], settings, SPEC)
    assert exc.value.status == 422


def test_zero_length_is_400(settings: Settings) -> None:
    with pytest.raises(InvalidInput):
        decode_image(b"", settings, SPEC)
    with pytest.raises(InvalidInput):
        parse_image_field("")


@pytest.mark.parametrize(
    "payload",
    [
        b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n" * 4,  # a PDF renamed cat.png
        b"#!/bin/sh\necho not a picture\n",
        b"\x89PNG\r\n\x1a\n" + b"garbage" * 10,  # PNG signature, no valid chunks
    ],
)
def test_non_image_disguised_as_png_is_415_or_422(settings: Settings, payload: bytes) -> None:
    with pytest.raises((UnsupportedMedia, Unprocessable)) as exc:
        decode_image(payload, settings, SPEC)
    assert exc.value.status in (415, 422)


def test_format_allowlist_uses_sniffed_format(settings: Settings) -> None:
    tiff = encode(gradient(), "TIFF")  # a real image, but not an allowed format, whatever it is called
    with pytest.raises(UnsupportedMedia):
        decode_image(tiff, settings, SPEC)
    only_png = settings.model_copy(update={"allowed_image_formats": ["PNG"]})
    with pytest.raises(UnsupportedMedia):
        decode_image(encode(gradient(), "JPEG"), only_png, SPEC)
    assert decode_image(encode(gradient(), "PNG"), only_png, SPEC).shape == (3, 32, 32)
    aliases = settings.model_copy(update={"allowed_image_formats": ["jpg", "NOPE"]})
    assert decode_image(encode(gradient(), "JPEG"), aliases, SPEC).shape == (3, 32, 32)


def test_byte_limit_is_413(settings: Settings) -> None:
    small = settings.model_copy(update={"max_image_bytes": 100})
    with pytest.raises(PayloadTooLarge):
        decode_image(encode(gradient()), small, SPEC)


def test_exif_orientation_is_applied(settings: Settings) -> None:
    x = np.zeros((20, 40, 3), dtype=np.uint8)
    x[:, :20] = (255, 0, 0)  # left half red, right half blue, as stored
    x[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img = open_image(encode(Image.fromarray(x), "JPEG", exif=exif.tobytes(), quality=95), settings)
    assert img.size == (20, 40)
    arr = np.asarray(img).astype(int)
    assert arr[5, 10, 0] > 200 and arr[5, 10, 2] < 60  # stored left (red) is now on top
    assert arr[35, 10, 2] > 200 and arr[35, 10, 0] < 60


def test_same_bytes_give_identical_arrays(settings: Settings) -> None:
    data = encode(gradient(), "JPEG", quality=80)
    a, b = decode_image(data, settings, SPEC), decode_image(bytes(data), settings, SPEC)
    assert a.dtype == np.float32 and a.shape == (3, 32, 32) and a.flags.c_contiguous
    assert np.array_equal(a, b)


def test_preprocess_matches_processor_math() -> None:
    exact = Image.fromarray(np.full((32, 32, 3), (255, 0, 128), dtype=np.uint8))
    out = preprocess(exact, SPEC)  # already at size: no resampling, exact normalization
    np.testing.assert_allclose(
        out[:, 0, 0], [(1 - 0.5) / 0.25, (0 - 0.5) / 0.25, (128 / 255 - 0.5) / 0.25], atol=1e-6
    )
    wide = preprocess(gradient(96, 48), SPEC)  # shortest edge to 32, then centre crop
    assert wide.shape == (3, 32, 32)
    red = wide[0] * 0.25 + 0.5
    assert 0.25 < red[:, 0].mean() < 0.4 and 0.6 < red[:, -1].mean() < 0.75  # the middle third survives
    squash = preprocess(gradient(96, 48), SPEC.model_copy(update={"resize": "squash"}))
    assert squash[0, 0, 0] < wide[0, 0, 0]  # squash keeps the full width


def test_rgba_and_palette_become_rgb(settings: Settings) -> None:
    rgba = Image.new("RGBA", (10, 10), (10, 20, 30, 0))
    pal = gradient().convert("P")
    pal.info["transparency"] = 0
    for img in (rgba, pal, gradient().convert("L")):
        assert decode_image(encode(img), settings, SPEC).shape == (3, 32, 32)


def test_parse_image_field_forms() -> None:
    raw = encode(gradient())
    b64 = base64.b64encode(raw).decode()
    assert parse_image_field(b64) == raw
    assert parse_image_field(f"data:image/png;base64,{b64}") == raw
    assert parse_image_field(base64.urlsafe_b64encode(raw).decode().rstrip("=")) == raw
    assert parse_image_field(" https://img.example.com/a.png ") == RemoteMedia(
        "https://img.example.com/a.png"
    )
    assert parse_image_field("HTTP://img.example.com/a.png") == RemoteMedia("HTTP://img.example.com/a.png")
    for bad in ("file:///etc/passwd", "ftp://x/y", "data:image/png,notbase64", "@@@@", "gopher://x"):
        with pytest.raises(InvalidInput) as exc:
            parse_image_field(bad, field="inputs[1].image")
        assert exc.value.field == "inputs[1].image"
    with pytest.raises(PayloadTooLarge):
        parse_image_field(b64, max_bytes=len(raw) // 2)


def test_lit_shapes_serving_preprocessing_matches_training(settings: Settings) -> None:
    """The registry's image block and decode_image reproduce exactly what the LiT tower was trained on."""
    from services.registry import load_registry
    from trt_build.synthetic import shapes, train_lit

    spec = load_registry().get("lit-shapes-image").image
    assert spec is not None and spec.size == shapes.IMAGE_SIZE
    assert spec.mean == train_lit.MEAN and spec.std == train_lit.STD
    item = shapes.held_out_items()[0]
    served = decode_image(encode(item.image), settings, spec)
    trained = train_lit.normalize_uint8(shapes.to_uint8([item]))[0].numpy()
    np.testing.assert_allclose(served, trained, atol=1e-6)


def test_small_images_are_decoded_inline_by_their_headers(settings: Settings) -> None:
    """Pixels are read from headers (nothing decoded); unreadable data goes to the pool, which names it."""
    small = encode(gradient(64, 64))  # 4,096 pixels
    assert settings.media_inline_pixels == 16_384
    assert decode_inline([], settings) and decode_inline([small] * 4, settings)
    assert not decode_inline([small] * 5, settings)
    assert not decode_inline([png_header_only(200, 100)], settings)  # 20,000 by its header alone
    assert not decode_inline([png_header_only(100_000, 100_000)], settings)  # a bomb: the pool refuses it
    assert not decode_inline([b"GIF89a not really"], settings)
    assert not decode_inline([encode(gradient(8, 8), "TIFF")], settings)  # not an allowed format
    assert not decode_inline([small], settings.model_copy(update={"media_inline_pixels": 0}))


async def test_a_tower_decodes_small_images_on_the_loop_and_the_rest_on_the_pool(settings: Settings) -> None:
    from services.cache import NoCache
    from services.embedder import Embedder
    from services.registry import load_registry

    class Pixels:
        def __init__(self) -> None:
            self.seen: list[np.ndarray] = []

        async def embed_pixels(self, model: str, pixel_values: np.ndarray) -> np.ndarray:
            self.seen.append(pixel_values)
            return np.ones((len(pixel_values), 384), dtype=np.float32)

        async def close(self) -> None:
            return None

    vectors = {}
    for budget in (16_384, 0):
        s = settings.model_copy(update={"media_inline_pixels": budget, "models": ["lit-shapes"]})
        encoder = Pixels()
        embedder = Embedder(s, load_registry(), encoder, NoCache())  # type: ignore[arg-type]
        out = await embedder.embed_media("lit-shapes", "image", encode(gradient(64, 64)))
        assert ("media" in embedder._pools) is (budget == 0)
        vectors[budget] = (out.vector, encoder.seen[0])
        await embedder.close()
    np.testing.assert_array_equal(vectors[0][1], vectors[16_384][1])  # the same pixels either way
