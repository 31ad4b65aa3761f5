"""Bounded image decoding: request field -> bytes -> checked Pillow image -> normalized CHW array.

Every limit is enforced before the expensive step it protects: the byte cap before base64 decoding,
the pixel cap from the header before any pixel is decompressed (decompression bombs), the format
allowlist by Pillow's own content sniffing (a file's name or data-URI type is never trusted). Video
frames go through the same `preprocess`, so an image and a video frame of the same picture embed alike.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from services.config import Settings
from services.errors import InvalidInput, PayloadTooLarge, Unprocessable, UnsupportedMedia
from services.registry import Image as ImageSpec

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*):")
_FORMAT_ALIASES = {"JPG": "JPEG", "TIF": "TIFF"}
_DATA_URI = re.compile(r"^data:([^,;]*)((?:;[^,;]*)*),", re.DOTALL)
# Pillow's own failure modes on hostile or broken files: all of them mean "cannot decode this".
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError, MemoryError)


@dataclass(frozen=True)
class RemoteMedia:
    """A field that names an http(s) URL: the caller must fetch it (services.media.fetch) under policy."""

    url: str


def parse_image_field(
    value: str, *, field: str = "inputs[0].image", max_bytes: int | None = None
) -> bytes | RemoteMedia:
    """Turn a request's media field (base64, data URI or http(s) URL) into bytes, or a `RemoteMedia`.

    Used for video fields too: the encoding rules are the same. `max_bytes` refuses an oversized
    payload from its base64 length, before allocating the decoded copy.
    """
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput("media field is empty", field=field)
    value = value.strip()
    scheme = _SCHEME.match(value)
    if scheme:
        name = scheme.group(1).lower()
        if name in ("http", "https"):
            return RemoteMedia(value)
        if name != "data":
            raise InvalidInput(
                f"unsupported URL scheme {name!r}: use base64, a data URI or http(s)", field=field
            )
        head = _DATA_URI.match(value)
        if head is None or ";base64" not in head.group(2).lower():
            raise InvalidInput("data URIs must be base64-encoded (data:<type>;base64,<data>)", field=field)
        value = value[head.end() :]
    return _b64decode(value, field=field, max_bytes=max_bytes)


def _b64decode(text: str, *, field: str, max_bytes: int | None) -> bytes:
    # Cheap pre-check on the encoded length (2% slack for MIME line breaks); exact check after decoding.
    if max_bytes is not None and len(text) * 3 // 4 > max_bytes + max_bytes // 50 + 3:
        raise PayloadTooLarge(f"media is larger than {max_bytes} bytes", field=field)
    text = "".join(text.split())
    if "-" in text or "_" in text:
        text = text.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("media field is not valid base64", field=field) from None
    if not data:
        raise InvalidInput("media is zero-length", field=field)
    if max_bytes is not None and len(data) > max_bytes:
        raise PayloadTooLarge(f"media is larger than {max_bytes} bytes", field=field)
    return data


def allowed_formats(settings: Settings) -> list[str]:
    """Settings' format names as Pillow plugin IDs; unknown names are dropped, common aliases mapped."""
    Image.init()
    names = [_FORMAT_ALIASES.get(f.upper(), f.upper()) for f in settings.allowed_image_formats]
    return [f for f in dict.fromkeys(names) if f in Image.OPEN]


def header_pixels(data: bytes, settings: Settings) -> int | None:
    """Width x height from the header alone (Pillow opens lazily: nothing is decompressed); None where no
    allowed format reads one. A cost estimate, not a check: `open_image` still refuses what it must."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=allowed_formats(settings)) as img:
                width, height = img.size
    except Exception:  # anything unreadable is for open_image to name, on the pool
        return None
    return width * height


def decode_inline(images: Sequence[bytes], settings: Settings) -> bool:
    """Whether these images are small enough to decode on the event loop: their headers add up to at most
    `media_inline_pixels`. For a 64 px image the media pool's hand-off cost about what its decode does
    (~0.5 vs ~0.9 ms on 2 vCPU, bench/README.md); an unreadable header goes to the pool, which names it."""
    budget = settings.media_inline_pixels
    if budget <= 0:
        return False
    pixels = 0
    for data in images:
        size = header_pixels(data, settings)
        if size is None:
            return False
        pixels += size
        if pixels > budget:
            return False
    return True


def open_image(data: bytes, settings: Settings, *, field: str = "inputs[0].image") -> Image.Image:
    """Decode bytes to an upright RGB image under the settings' byte, pixel and format limits."""
    if not data:
        raise InvalidInput("image is zero-length", field=field)
    if len(data) > settings.max_image_bytes:
        raise PayloadTooLarge(f"image is larger than {settings.max_image_bytes} bytes", field=field)
    formats = allowed_formats(settings)
    try:
        with warnings.catch_warnings():
            # Our own pixel cap below is stricter; Pillow's bomb warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=formats)  # header only: sniffed by content
    except Image.DecompressionBombError:
        raise PayloadTooLarge("image dimensions exceed the pixel limit", field=field) from None
    except UnidentifiedImageError:
        raise UnsupportedMedia(
            f"not an image in an allowed format ({', '.join(formats)})", field=field
        ) from None
    except _DECODE_ERRORS as exc:
        raise Unprocessable(f"corrupt image header: {exc}", field=field) from None
    width, height = img.size
    if width * height > settings.max_image_pixels:
        raise PayloadTooLarge(
            f"image is {width}x{height} pixels; the limit is {settings.max_image_pixels}", field=field
        )
    if width < 1 or height < 1:
        raise Unprocessable("image has no pixels", field=field)
    try:
        img.load()
        upright: Image.Image = _upright(img)
        if upright.mode == "P" and "transparency" in upright.info:
            upright = upright.convert("RGBA")
        return upright.convert("RGB")
    except _DECODE_ERRORS as exc:
        raise Unprocessable(f"truncated or corrupt image: {exc}", field=field) from None


def _upright(img: Image.Image) -> Image.Image:
    """Apply EXIF orientation; a malformed EXIF block is ignored rather than failing a good image."""
    try:
        return ImageOps.exif_transpose(img)
    except _DECODE_ERRORS:
        return img


def preprocess(img: Image.Image, spec: ImageSpec) -> np.ndarray:
    """RGB image -> float32 (3, size, size), resized/cropped as the model's processor does, normalized.

    Shortest-edge resize + centre crop follows transformers' CLIPImageProcessor (bicubic, integer
    long edge, floor-centred crop); an image already at the target size is used as is, bit-exact.
    """
    size = spec.size
    if img.size != (size, size):
        if spec.resize == "squash":
            img = img.resize((size, size), Image.Resampling.BICUBIC)
        else:
            w, h = img.size
            new = (size, max(size, int(size * h / w))) if w <= h else (max(size, int(size * w / h)), size)
            img = img.resize(new, Image.Resampling.BICUBIC)
            left, top = (new[0] - size) // 2, (new[1] - size) // 2
            img = img.crop((left, top, left + size, top + size))
    x = np.asarray(img, dtype=np.float32) * np.float32(1 / 255)
    x = (x - np.asarray(spec.mean, dtype=np.float32)) / np.asarray(spec.std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def decode_image(
    data: bytes, settings: Settings, spec_image: ImageSpec, field: str = "inputs[0].image"
) -> np.ndarray:
    """Bytes -> model input: float32 (3, size, size). Same bytes always give the identical array."""
    return preprocess(open_image(data, settings, field=field), spec_image)
