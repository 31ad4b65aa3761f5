"""Images, video and interleaved items through the gateway and the real Triton (LiT test model).

Thresholds: the model's own held-out figures (trt_build/assets/lit-shapes/metrics.json) are text->image
R@1 0.99 and text->video R@1 0.98 over 324 items (chance 0.003); through the gateway we assert R@1 >= 0.8
and R@10 >= 0.95 on subsets, a wide margin over chance that still catches a broken preprocessing path.
"""

from __future__ import annotations

import base64
import io
import struct
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.integration.conftest import Gateway
from trt_build.synthetic.shapes import held_out_items, render_video

pytestmark = pytest.mark.integration
MODEL = "lit-shapes"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def embed(gw: Gateway, inputs: list[dict], **extra: object) -> httpx.Response:
    return httpx.post(
        f"{gw.base_url}/v1/embed", json={"model": MODEL, "inputs": inputs, **extra}, timeout=120
    )


def recall(q: np.ndarray, d: np.ndarray, k: int) -> float:
    ranks = np.argsort(-(q @ d.T), axis=1)[:, :k]
    return float(np.mean([i in ranks[i] for i in range(len(q))]))


@pytest.fixture(scope="module")
def items():  # type: ignore[no-untyped-def]
    return held_out_items()[::3][:100]


def test_text_to_image_retrieval_and_determinism(mm_gateway: Gateway, items) -> None:  # type: ignore[no-untyped-def]
    images = [png(it.image) for it in items]
    r_img = embed(mm_gateway, [{"image": b64(x)} for x in images])
    assert r_img.status_code == 200, r_img.text
    assert {d["kind"] for d in r_img.json()["data"]} == {"image"}
    r_txt = embed(mm_gateway, [{"text": it.caption} for it in items], task="retrieval.query")
    img = np.array([d["embedding"] for d in r_img.json()["data"]])
    txt = np.array([d["embedding"] for d in r_txt.json()["data"]])
    assert recall(txt, img, 1) >= 0.8 and recall(txt, img, 10) >= 0.95
    again = embed(mm_gateway, [{"image": "data:image/png;base64," + b64(images[0])}]).json()
    assert again["data"][0]["embedding"] == r_img.json()["data"][0]["embedding"]


def test_text_to_video_retrieval_reports_frames(mm_gateway: Gateway, items) -> None:  # type: ignore[no-untyped-def]
    subset = items[:24]
    videos = [render_video(it.attrs, seed=i) for i, it in enumerate(subset)]
    r = embed(mm_gateway, [{"video": b64(v)} for v in videos])
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert all(d["kind"] == "video" and len(d["frame_timestamps_s"]) == 8 for d in data)
    ts = data[0]["frame_timestamps_s"]
    assert ts == sorted(ts) and ts[0] > 0
    vid = np.array([d["embedding"] for d in data])
    txt = np.array(
        [
            d["embedding"]
            for d in embed(mm_gateway, [{"text": it.attrs.caption} for it in subset]).json()["data"]
        ]
    )
    assert recall(txt, vid, 1) >= 0.6 and recall(txt, vid, 10) >= 0.95


def test_interleaved_text_and_image_fuse(mm_gateway: Gateway, items) -> None:  # type: ignore[no-untyped-def]
    it = items[0]
    both = embed(
        mm_gateway, [{"text": "what colour is it?", "image": b64(png(it.image))}], task="vqa.query"
    ).json()
    assert both["data"][0]["kind"] == "text+image"
    assert (
        both["template"]["template"] == "{image}Represent the given image with the following question: {text}"
    )
    v = np.array(both["data"][0]["embedding"])
    assert abs(np.linalg.norm(v) - 1) < 1e-5


def tiny_png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims huge dimensions (a decompression bomb's signature)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
        + struct.pack(">I", 0)
        + b"IEND"
        + struct.pack(">I", zlib.crc32(b"IEND"))
    )


def audio_only_mp4() -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as c:
        s = c.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono"
        )
        frame.sample_rate = 8000
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


BAD_MEDIA = pytest.mark.parametrize(
    ("name", "item", "status"),
    [
        ("bomb", lambda: {"image": b64(tiny_png_header(100_000, 100_000))}, 413),
        ("truncated png", lambda: {"image": b64(png(held_out_items()[0].image)[:60])}, 422),
        ("zero length", lambda: {"image": ""}, 400),
        ("not an image", lambda: {"image": b64(b"\x89PNG\r\n\x1a\n" + b"hello world" * 20)}, 415),
        ("text as png", lambda: {"image": b64(b"just some text, not a picture at all")}, 415),
        ("audio only", lambda: {"video": b64(audio_only_mp4())}, 422),
        ("garbage video", lambda: {"video": b64(b"\x00\x01garbage" * 100)}, 415),
        # fetching is off by default: refused before any resolution or connection. Metadata, private and
        # link-local addresses are checked in tests/unit/services/media/test_fetch.py with a stub
        # resolver and a recording connector, so no test here ever names a non-loopback host.
        ("url loopback", lambda: {"image": "http://127.0.0.1:1/x.png"}, 403),
    ],
)


@BAD_MEDIA
def test_bad_media_is_a_clear_4xx_and_server_stays_healthy(
    mm_gateway: Gateway, name: str, item, status: int
) -> None:  # type: ignore[no-untyped-def]
    r = embed(mm_gateway, [item()])
    assert r.status_code == status, (name, r.text)
    assert r.json()["error"]["param"].startswith("inputs[0]")
    assert httpx.get(f"{mm_gateway.base_url}/healthz").status_code == 200


def ten_minute_video(img: Image.Image) -> bytes:
    """A 10-minute clip at 1 frame per 5 s stays tiny; its declared duration is what must be refused."""
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as c:
        from fractions import Fraction

        s = c.add_stream("mpeg4", rate=Fraction(1, 5))
        s.width = s.height = 32
        s.pix_fmt = "yuv420p"
        img = img.resize((32, 32))
        for _ in range(121):
            for p in s.encode(av.VideoFrame.from_image(img)):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


def test_ten_minute_video_refused(mm_gateway: Gateway, items) -> None:  # type: ignore[no-untyped-def]
    r = embed(mm_gateway, [{"video": b64(ten_minute_video(items[0].image))}])
    assert r.status_code == 413, r.text


def test_url_fetching_refuses_loopback_even_when_allowlisted(settings, triton) -> None:  # type: ignore[no-untyped-def]
    """With fetching on and 127.0.0.1 on the allowlist, the address check still refuses it (SSRF).
    Only a loopback URL is used here, so even a broken check could not reach another host."""
    from tests.integration.conftest import start_gateway

    gw = start_gateway(
        settings,
        triton.ports.grpc_url,
        "fetch",
        fetch_enabled="true",
        fetch_allowed_hosts="127.0.0.1,localhost",
    )
    try:
        for url in ("http://127.0.0.1:9/x.png", "http://localhost:9/x.png"):
            r = embed(gw, [{"image": url}])
            assert r.status_code in (400, 403), r.text
            assert r.json()["error"]["param"] == "inputs[0].image"
            assert "address" in r.json()["error"]["message"]
    finally:
        gw.stop()


def rss_mb(pid: int) -> float:
    from pathlib import Path

    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def test_bad_media_keeps_memory_bounded(mm_gateway: Gateway) -> None:
    """Bombs are refused from their header, before any pixel buffer exists: repeated attempts must not
    grow the gateway's resident memory (a full decode of 100k x 100k RGB would need 30 GB)."""
    bad = [
        {"image": b64(tiny_png_header(100_000, 100_000))},
        {"image": b64(tiny_png_header(40_000, 40_000))},
        {"image": b64(png(held_out_items()[0].image)[:60])},
        {"video": b64(b"\x00\x01garbage" * 1000)},
    ]
    embed(mm_gateway, [bad[0]])  # warm-up: first-use imports and pools
    before = rss_mb(mm_gateway.proc.pid)
    for _ in range(10):
        for item in bad:
            assert 400 <= embed(mm_gateway, [item]).status_code < 500
    growth = rss_mb(mm_gateway.proc.pid) - before
    assert growth < 100, f"gateway RSS grew {growth:.0f} MB on rejected media"
    assert httpx.get(f"{mm_gateway.base_url}/healthz").status_code == 200
