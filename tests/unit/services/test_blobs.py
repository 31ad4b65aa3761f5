"""BlobStore: content addressing, idempotent atomic writes, digest validation."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from services.blobs import BlobStore, is_digest
from services.config import Settings
from services.errors import InvalidInput, NotFound


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


def test_put_get_round_trip_is_content_addressed(blobs: BlobStore) -> None:
    data = b"\x89PNG fake image bytes"
    digest = blobs.put(data)
    assert digest == hashlib.sha256(data).hexdigest() and is_digest(digest)
    assert blobs.get(digest) == data and blobs.exists(digest)
    assert blobs.path(digest) == blobs.root / digest[:2] / digest[2:4] / digest


def test_put_is_idempotent_and_leaves_no_temporary_files(blobs: BlobStore) -> None:
    first = blobs.put(b"same")
    assert blobs.put(b"same") == first
    assert blobs.put(b"") != first  # the empty blob is a blob like any other
    files = [p for p in blobs.root.rglob("*") if p.is_file()]
    assert sorted(p.name for p in files) == sorted([first, hashlib.sha256(b"").hexdigest()])


def test_failed_write_leaves_nothing_behind(blobs: BlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("services.blobs.os.replace", boom)
    with pytest.raises(OSError):
        blobs.put(b"never stored")
    assert not [p for p in blobs.root.rglob("*") if p.is_file()]


def test_missing_and_deleted_blobs(blobs: BlobStore) -> None:
    digest = blobs.put(b"gone soon")
    assert blobs.delete(digest) and not blobs.exists(digest)
    assert not blobs.delete(digest)
    with pytest.raises(NotFound):
        blobs.get(digest)


@pytest.mark.parametrize(
    "digest",
    [
        "../../etc/passwd",
        "a" * 63,
        "A" * 64,
        "g" * 64,
        "/" + "a" * 63,
        "a" * 64 + "/..",
        "",
        "aa/bb/" + "c" * 58,
    ],
)
def test_bad_digests_are_400(blobs: BlobStore, digest: str) -> None:
    for call in (blobs.get, blobs.exists, blobs.delete, blobs.path):
        with pytest.raises(InvalidInput) as exc:
            call(digest)
        assert exc.value.field == "digest"


def test_from_settings_defaults_under_data_dir(tmp_path: Path) -> None:
    assert BlobStore.from_settings(Settings(data_dir=tmp_path)).root == tmp_path / "blobs"
    custom = tmp_path / "elsewhere"
    assert BlobStore.from_settings(Settings(data_dir=tmp_path, blob_dir=custom)).root == custom
