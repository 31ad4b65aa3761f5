"""Content-addressed blob store for the media a collection must keep to re-embed later.

Images and videos are too large for a Qdrant payload, so a point stores only the sha256 of its source
and the bytes live here, once, however many documents share them. The digest is the file name, so
writes are idempotent and two processes writing the same blob cannot disagree. Files are written to a
temporary name in the target directory and renamed into place, so a reader never sees a torn blob.
A local directory by default; point `EMBEDFLEET_BLOB_DIR` at shared storage for several hosts.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

from services.config import Settings
from services.errors import InvalidInput, NotFound

_DIGEST_RE = re.compile(r"[0-9a-f]{64}")


def is_digest(value: object) -> bool:
    """A lowercase sha256 hex digest: the only shape that can name a blob (no path can sneak in)."""
    return isinstance(value, str) and _DIGEST_RE.fullmatch(value) is not None


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BlobStore:
    """Blobs under `root/ab/cd/<digest>`: two shard levels keep directories small at millions of files."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_settings(cls, settings: Settings) -> BlobStore:
        return cls(settings.blobs_path)

    def path(self, digest: str) -> Path:
        """Where a blob lives (whether or not it exists); 400 for anything that is not a digest."""
        if not is_digest(digest):
            raise InvalidInput("blob digest must be 64 lowercase hex characters", field="digest")
        return self.root / digest[:2] / digest[2:4] / digest

    def put(self, data: bytes) -> str:
        """Store `data` and return its digest; storing the same bytes again is a no-op."""
        digest = digest_of(data)
        target = self.path(digest)
        if target.exists():
            return digest
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; workers may run as another user
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return digest

    def get(self, digest: str) -> bytes:
        try:
            return self.path(digest).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"blob {digest} not found", field="digest") from None

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def delete(self, digest: str) -> bool:
        """Remove a blob; False if it was not there (deletes are idempotent, like puts)."""
        try:
            self.path(digest).unlink()
        except FileNotFoundError:
            return False
        return True
