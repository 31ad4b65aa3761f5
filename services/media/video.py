"""Bounded video decoding with PyAV: N uniformly sampled frames, preprocessed exactly like images
(image towers), or as raw RGB frames with the clip's duration (VLMs preprocess frames themselves).

Limits are checked in order of cost: bytes, then the container's sniffed type (only a fixed set of
demuxers is ever handed to FFmpeg, so playlist/concat demuxers that open other files or URLs are
unreachable), then the header's resolution and declared duration, and during decoding a wall-clock
budget checked per packet plus a cap on the presentation time actually reached (a file that lies
about its duration is still stopped). Nothing here can hang or raise anything but a core error.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from PIL import Image

from services.config import Settings
from services.errors import EmbedfleetError, InvalidInput, PayloadTooLarge, Unprocessable, UnsupportedMedia
from services.media.images import preprocess
from services.registry import Image as ImageSpec

# FFmpeg and PyAV failure modes on hostile or broken files: all of them mean "cannot decode this".
_DECODE_ERRORS = (
    av.FFmpegError,
    OSError,
    ValueError,
    EOFError,
    MemoryError,
    IndexError,
    ZeroDivisionError,
    AttributeError,
    TypeError,
    OverflowError,
    RuntimeError,
)
SEEK_ABOVE_S = 30.0  # longer videos are sampled by seeking to each timestamp instead of decoding it all


def sniff_container(data: bytes) -> str | None:
    """FFmpeg demuxer name for the container these bytes start with, or None if not an allowed one."""
    head = data[:16]
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
        return "mov"  # also mp4, m4v, 3gp
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"  # also webm
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:3] == b"FLV":
        return "flv"
    if head[:4] == b"\x00\x00\x01\xba":
        return "mpeg"
    if len(data) >= 188 * 3 and all(data[i] == 0x47 for i in (0, 188, 376)):
        return "mpegts"
    return None


@dataclass(frozen=True)
class Frames:
    """Decoded frames in time order (RGB, source size), their times and the declared clip duration."""

    images: list[Image.Image]
    timestamps: list[float]  # seconds from the start
    duration_s: float | None  # None when the container does not say


def uniform_timestamps(duration_s: float, n: int) -> list[float]:
    """Centres of n equal segments of [0, duration): the usual uniform sampling of video models."""
    return [duration_s * (k + 0.5) / n for k in range(n)]


FRAME_FACTOR = 2  # qwen-vl-utils: frame counts are even (one temporal patch holds two frames)


@dataclass(frozen=True)
class RateSampling:
    """Frames at `fps` instead of a fixed count: qwen-vl-utils' `smart_nframes` rule, which
    Qwen3-VL-Embedding samples with (fps 1, at most 64). The count is the clip's frames at this rate,
    kept within [min_frames, max_frames] and the clip's own frame count, rounded down to an even number;
    the frames are those at the rounded, evenly spaced frame indices over the whole clip."""

    fps: float
    min_frames: int = 4

    def count(self, total_frames: int, clip_fps: float, max_frames: int) -> int:
        even = FRAME_FACTOR
        low = math.ceil(self.min_frames / even) * even
        high = max_frames // even * even
        n = min(max(total_frames / clip_fps * self.fps, low), high, total_frames)
        return max(1, int(n // even * even))  # a clip of one frame keeps it (the reference refuses it)

    @staticmethod
    def indices(total_frames: int, n: int) -> list[int]:
        """`torch.linspace(0, total - 1, n).round()` of the reference (round half to even)."""
        return [int(i) for i in np.round(np.linspace(0, total_frames - 1, n))]


def decode_video(
    data: bytes,
    settings: Settings,
    frames: int,
    spec_image: ImageSpec,
    field: str = "inputs[0].video",
    *,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[np.ndarray, list[float]]:
    """Bytes -> (float32 (N, 3, size, size) frames, their timestamps in seconds from the start).

    N is `frames`, or fewer when the video holds fewer distinct frames than that.
    """
    got = decode_frames(data, settings, frames, field, clock=clock)
    return np.stack([preprocess(img, spec_image) for img in got.images]), got.timestamps


def decode_frames(
    data: bytes,
    settings: Settings,
    frames: int,
    field: str = "inputs[0].video",
    *,
    clock: Callable[[], float] = time.monotonic,
    rate: RateSampling | None = None,
) -> Frames:
    """Bytes -> up to `frames` RGB frames under every limit of `decode_video`: spread evenly over the
    clip, or (`rate`) at a frame rate, `frames` being the most."""
    if not data:
        raise InvalidInput("video is zero-length", field=field)
    if len(data) > settings.max_video_bytes:
        raise PayloadTooLarge(f"video is larger than {settings.max_video_bytes} bytes", field=field)
    fmt = sniff_container(data)
    if fmt is None:
        raise UnsupportedMedia(
            "not a video container we accept (mp4/mov, mkv/webm, avi, gif, ogg, flv, mpeg, ts)", field=field
        )
    try:
        with av.open(io.BytesIO(data), mode="r", format=fmt) as container:
            return _decode(container, settings, frames, field, clock, rate)
    except EmbedfleetError:
        raise
    except av.error.InvalidDataError:
        raise UnsupportedMedia("unreadable or unsupported video container", field=field) from None
    except _DECODE_ERRORS as exc:
        raise Unprocessable(f"corrupt or undecodable video: {exc}", field=field) from None


def _decode(container, settings: Settings, n: int, field: str, clock, rate: RateSampling | None) -> Frames:
    deadline = clock() + settings.video_decode_timeout_s
    if not container.streams.video:
        raise Unprocessable("the file has no video stream", field=field)
    stream = container.streams.video[0]
    if stream.codec_context is None:
        raise UnsupportedMedia("unsupported video codec", field=field)
    width, height = stream.codec_context.width, stream.codec_context.height
    if width * height > settings.max_video_pixels:
        raise PayloadTooLarge(
            f"video frames are {width}x{height}; the limit is {settings.max_video_pixels} pixels", field=field
        )
    duration = _duration_s(container, stream)
    if duration is not None and duration > settings.max_video_seconds:
        raise PayloadTooLarge(
            f"video lasts {duration:.0f} s; the limit is {settings.max_video_seconds:g} s", field=field
        )
    stream.thread_type = "AUTO"
    start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    clip_fps = float(stream.average_rate or stream.guessed_rate or 0)
    if rate is not None and duration and clip_fps > 0:
        total = int(stream.frames) or max(1, round(duration * clip_fps))
        targets = [i / clip_fps for i in rate.indices(total, rate.count(total, clip_fps, n))]
    else:
        targets = uniform_timestamps(duration, n) if duration else [0.0] * n

    def frames_from(seek_to: float | None) -> Iterator[tuple[float, av.VideoFrame]]:
        """Decoded frames (time from start, frame), checking the wall-clock and time budgets per packet."""
        if seek_to is not None:
            container.seek(int((start + seek_to) / stream.time_base), stream=stream, backward=True)
        for packet in container.demux(stream):
            if clock() > deadline:
                raise PayloadTooLarge(
                    f"video decoding exceeded {settings.video_decode_timeout_s:g} s", field=field
                )
            for frame in packet.decode():
                if frame.width * frame.height > settings.max_video_pixels:  # headers can understate it
                    raise PayloadTooLarge(
                        f"a video frame exceeds {settings.max_video_pixels} pixels", field=field
                    )
                t = (frame.time if frame.time is not None else 0.0) - start
                if t > settings.max_video_seconds:
                    raise PayloadTooLarge(f"video runs past {settings.max_video_seconds:g} s", field=field)
                yield t, frame

    picked: list[tuple[float, Image.Image]] = []
    if duration is not None and duration > SEEK_ABOVE_S:
        for target in targets:
            picked += _nearest(frames_from(target), [target])
    else:
        picked = _nearest(frames_from(None), targets)
    picked = list(dict(picked).items())  # one entry per distinct frame time, in order
    if not picked:
        raise Unprocessable("no decodable video frames", field=field)
    return Frames([img for _, img in picked], [round(t, 6) for t, _ in picked], duration)


def _nearest(
    frames: Iterator[tuple[float, av.VideoFrame]], targets: list[float]
) -> list[tuple[float, Image.Image]]:
    """For each (sorted) target, the decoded frame nearest to it (ties go to the earlier frame).

    Stops decoding as soon as the last target is settled; targets past the end get the last frame.
    """
    out: list[tuple[float, av.VideoFrame]] = []
    prev: tuple[float, av.VideoFrame] | None = None
    i = 0
    for t, frame in frames:
        while i < len(targets) and t >= targets[i]:
            out.append(prev if prev is not None and targets[i] - prev[0] <= t - targets[i] else (t, frame))
            i += 1
        if i == len(targets):
            break
        prev = (t, frame)
    if i < len(targets) and prev is not None:
        out.append(prev)
    return [(t, frame.to_image()) for t, frame in dict(out).items()]


def _duration_s(container, stream) -> float | None:
    """Declared duration: the stream's, else the container's; None when the file does not say."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return float(Fraction(container.duration, av.time_base))
    return None
