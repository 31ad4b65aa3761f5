"""Video decoding under limits: long, audio-only, corrupt and oversized files are 4xx; sampling is uniform."""

from __future__ import annotations

import io
from fractions import Fraction
from types import ModuleType

import av
import numpy as np
import pytest

from services.config import Settings
from services.errors import InvalidInput, PayloadTooLarge, Unprocessable, UnsupportedMedia
from services.media.images import decode_image
from services.media.video import (
    RateSampling,
    decode_frames,
    decode_video,
    sniff_container,
    uniform_timestamps,
)
from services.registry import Image as ImageSpec
from trt_build.synthetic import shapes

SPEC = ImageSpec(size=16, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


@pytest.fixture
def settings() -> Settings:
    return Settings(max_video_seconds=600.0, video_decode_timeout_s=20.0)


def make_video(frames: int, fps: Fraction | int, size: int = 16, fmt: str = "mp4") -> bytes:
    """A tiny mpeg4 clip whose frame k is uniformly grey at level 6*k, so picked frames are identifiable."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        s.options = {"qscale": "1"}
        for k in range(frames):
            grey = np.full((size, size, 3), min(6 * k, 255), dtype=np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(grey, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


def make_audio_only() -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream("aac", rate=8000)
        s.layout = "mono"
        for k in range(4):
            fr = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            fr.sample_rate, fr.pts = 8000, k * 1024
            for p in s.encode(fr):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


def test_ten_minute_video_refused_from_header(settings: Settings) -> None:
    data = make_video(61, Fraction(1, 10))  # 61 frames, one per 10 s: 610 s declared, ~2 KB
    assert len(data) < 20_000
    with pytest.raises(PayloadTooLarge) as exc:
        decode_video(data, settings, 8, SPEC, field="inputs[0].video")
    assert exc.value.status == 413 and exc.value.field == "inputs[0].video"
    ticks = iter(range(10**6))
    # Refused before decoding: no packet-time budget was ever consulted beyond the start.
    with pytest.raises(PayloadTooLarge):
        decode_video(data, settings, 8, SPEC, clock=lambda: float(next(ticks)))
    assert next(ticks) == 1


def test_audio_only_is_422(settings: Settings) -> None:
    with pytest.raises(Unprocessable, match="no video stream"):
        decode_video(make_audio_only(), settings, 8, SPEC)


@pytest.mark.parametrize(
    "payload",
    [
        b"\x00" * 4096,
        bytes(range(256)) * 16,
        b"\x00\x00\x00\x18ftypmp42" + b"\xde\xad\xbe\xef" * 500,  # mp4 signature, garbage boxes
        b"\x1a\x45\xdf\xa3" + b"\x01" * 300,  # matroska signature, garbage
    ],
)
def test_garbage_is_415_or_422(settings: Settings, payload: bytes) -> None:
    with pytest.raises((UnsupportedMedia, Unprocessable)):
        decode_video(payload, settings, 8, SPEC)


def test_truncated_video_is_415_or_422(settings: Settings) -> None:
    data = make_video(20, 10)  # moov box at the end: a cut loses the index
    for cut in (100, len(data) // 3):
        with pytest.raises((UnsupportedMedia, Unprocessable)):
            decode_video(data[:cut], settings, 4, SPEC)


def test_damaged_bitstream_never_escapes_as_a_crash(settings: Settings) -> None:
    data = bytearray(make_video(20, 10))
    rng = np.random.default_rng(0)
    for _ in range(100):
        damaged = bytearray(data)
        for pos in rng.integers(48, len(data) - 200, size=8):
            damaged[pos] ^= 0xFF
        try:
            pixels, ts = decode_video(bytes(damaged), settings, 4, SPEC)
        except (UnsupportedMedia, Unprocessable, PayloadTooLarge):
            continue
        assert pixels.shape[0] == len(ts) >= 1


def test_image_and_unknown_containers_are_415(settings: Settings) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100
    playlist = b"#EXTM3U\n#EXT-X-TARGETDURATION:1\nhttp://169.254.169.254/latest/meta-data\n"
    for data in (png, playlist):
        assert sniff_container(data) is None
        with pytest.raises(UnsupportedMedia):
            decode_video(data, settings, 8, SPEC)


def test_zero_length_and_byte_limit(settings: Settings) -> None:
    with pytest.raises(InvalidInput):
        decode_video(b"", settings, 8, SPEC)
    data = make_video(4, 4)
    with pytest.raises(PayloadTooLarge):
        decode_video(data, settings.model_copy(update={"max_video_bytes": len(data) - 1}), 8, SPEC)


def test_resolution_limit(settings: Settings) -> None:
    with pytest.raises(PayloadTooLarge, match="16x16"):
        decode_video(make_video(4, 4), settings.model_copy(update={"max_video_pixels": 255}), 2, SPEC)


def test_decode_time_budget_stops_decoding(settings: Settings) -> None:
    now = [0.0]

    def clock() -> float:
        now[0] += 5.0  # every check looks 5 s later: the 20 s budget runs out mid-file
        return now[0]

    with pytest.raises(PayloadTooLarge, match="exceeded"):
        decode_video(make_video(40, 10), settings, 8, SPEC, clock=clock)


def test_uniform_sampling_short_clip(settings: Settings) -> None:
    data = make_video(32, 8)  # 4 s at 8 fps: segment centres 0.25, 0.75, ... fall exactly on frames
    pixels, ts = decode_video(data, settings, 8, SPEC)
    assert pixels.shape == (8, 3, 16, 16) and pixels.dtype == np.float32
    assert ts == pytest.approx([0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.25, 3.75], abs=1e-4)
    levels = pixels.mean(axis=(1, 2, 3)) * 255
    np.testing.assert_allclose(
        levels, [6 * round(t * 8) for t in ts], atol=3
    )  # the right frames, not just times
    again, ts2 = decode_video(data, settings, 8, SPEC)
    assert ts2 == ts and np.array_equal(again, pixels)


def test_uniform_sampling_long_clip_by_seeking(settings: Settings) -> None:
    data = make_video(40, 1)  # 40 s at 1 fps: above SEEK_ABOVE_S, sampled by seeking
    pixels, ts = decode_video(data, settings, 4, SPEC)
    assert ts == pytest.approx([5.0, 15.0, 25.0, 35.0], abs=1e-4)
    np.testing.assert_allclose(pixels.mean(axis=(1, 2, 3)) * 255, [6 * t for t in ts], atol=3)


def test_raw_frames_for_vlms_keep_size_and_duration(settings: Settings) -> None:
    """A VLM resizes frames itself (its pixel budget) and spaces video positions by the clip's duration."""
    data = make_video(32, 8, size=32)
    got = decode_frames(data, settings, 8)
    pixels, ts = decode_video(data, settings, 8, SPEC)
    assert got.timestamps == ts and got.duration_s == pytest.approx(4.0, abs=0.2)
    assert [img.size for img in got.images] == [(32, 32)] * 8 and got.images[0].mode == "RGB"
    np.testing.assert_allclose(
        [np.asarray(i).mean() for i in got.images], pixels.mean(axis=(1, 2, 3)) * 255, atol=1
    )
    with pytest.raises(PayloadTooLarge):  # the same limits
        decode_frames(make_video(61, Fraction(1, 10)), settings, 8)


def test_more_frames_than_the_clip_has(settings: Settings) -> None:
    pixels, ts = decode_video(make_video(3, 3), settings, 8, SPEC)
    assert len(ts) == len(pixels) == 3 and ts == pytest.approx([0.0, 1 / 3, 2 / 3], abs=1e-3)


def test_uniform_timestamps() -> None:
    assert uniform_timestamps(8.0, 4) == [1.0, 3.0, 5.0, 7.0]


def test_frames_share_image_preprocessing(settings: Settings) -> None:
    """A still video of a synthetic image embeds like the image itself (same preprocessing code)."""
    attrs = shapes.held_out_items()[0].attrs
    video = shapes.render_video(attrs, frames=4, travel=0.0)
    spec = ImageSpec(size=64, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    frames, ts = decode_video(video, settings, 2, spec)
    buf = io.BytesIO()
    shapes.render(attrs, 0).save(buf, format="PNG")
    still = decode_image(buf.getvalue(), settings, spec)
    assert frames.shape == (2, 3, 64, 64) and len(ts) == 2
    assert np.abs(frames[0] - still).mean() < 0.1  # mpeg4 + yuv420p loss only


@pytest.mark.parametrize("fps", [1.0, 2.0, 0.5])
@pytest.mark.parametrize("max_frames", [64, 8, 7])
def test_rate_sampling_counts_and_picks_frames_as_qwen_vl_utils(
    qwen_vl_utils: ModuleType, fps: float, max_frames: int
) -> None:
    import torch

    rule = RateSampling(fps, min_frames=4)
    for total, clip_fps in [(3, 30.0), (9, 24.0), (90, 30.0), (301, 29.97), (1800, 30.0), (7200, 24.0)]:
        ele = {"fps": fps, "min_frames": 4, "max_frames": max_frames}
        try:
            want = qwen_vl_utils.smart_nframes(ele, total_frames=total, video_fps=clip_fps)
        except ValueError:  # the reference refuses a clip it cannot give two frames; we keep what there is
            want = None
        got = rule.count(total, clip_fps, max_frames)
        assert want is None or got == want, (total, clip_fps, got, want)
        idx = torch.linspace(0, total - 1, got).round().long().tolist()
        assert rule.indices(total, got) == idx, (total, got)


def test_decoding_at_a_frame_rate(settings: Settings) -> None:
    data = make_video(40, 8)  # 5 s at 8 fps: at 1 fps, 5 frames rounded down to 4 (even), spread over it
    got = decode_frames(data, settings, 64, rate=RateSampling(1.0))
    picked = RateSampling.indices(40, 4)  # 0, 13, 26, 39
    assert got.timestamps == pytest.approx([i / 8 for i in picked], abs=1e-4)
    levels = [np.asarray(img).mean() for img in got.images]
    np.testing.assert_allclose(levels, [min(6 * i, 255) for i in picked], atol=3)
    assert len(decode_frames(data, settings, 2, rate=RateSampling(4.0)).images) == 2  # video_frames caps it
    long = decode_frames(make_video(40, 1), settings, 64, rate=RateSampling(0.5))  # 40 s, by seeking
    assert long.timestamps == pytest.approx([float(i) for i in RateSampling.indices(40, 20)], abs=1e-4)
