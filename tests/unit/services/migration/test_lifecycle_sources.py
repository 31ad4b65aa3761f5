"""What the backfill and the cutover's straggler pass re-embed: every stored source kind comes back."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

from services.blobs import BlobStore
from services.migration.lifecycle import pseudo_query, source_documents
from services.store import StoredPoint


def _point(pid: str, source: dict[str, str] | None, payload: dict[str, object] | None = None) -> StoredPoint:
    return StoredPoint(id=pid, payload=payload or {}, source=source)


def test_text_image_and_video_sources_are_rebuilt_from_the_blob_store(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    png, mp4 = b"\x89PNG fake image bytes", b"\x00\x00\x00\x18ftypmp42 fake video"
    points = [
        _point("t", {"text": "a document"}, {"lang": "en"}),
        _point("i", {"image": blobs.put(png)}),
        _point("v", {"video": blobs.put(mp4)}),
        _point("none", None),
    ]
    docs = asyncio.run(source_documents(blobs, points))
    by_id = {d.id: d for d in docs}
    assert set(by_id) == {"t", "i", "v"}  # a point without a source cannot be re-embedded
    assert by_id["t"].text == "a document" and by_id["t"].payload == {"lang": "en"}
    assert base64.b64decode(by_id["i"].image or "") == png
    assert base64.b64decode(by_id["v"].video or "") == mp4


def test_pseudo_query_is_the_first_sentence_capped() -> None:
    assert pseudo_query("Return the sum.  It adds numbers.") == "Return the sum."
    assert pseudo_query("no sentence end " * 40) == ("no sentence end " * 40).strip()[:300]
