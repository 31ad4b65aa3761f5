"""Vector arithmetic shared by every path: normalization, Matryoshka truncation, fusion, wire encodings."""

from __future__ import annotations

import base64

import numpy as np


def l2_normalize(v: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(v, axis=-1, keepdims=True)
    return (v / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def finish(v: np.ndarray, dimensions: int | None, normalize: bool) -> np.ndarray:
    """Truncate to the first `dimensions` (Matryoshka), then renormalize: order matters."""
    if dimensions is not None and dimensions < v.shape[-1]:
        v = v[..., :dimensions]
    return l2_normalize(v) if normalize else v.astype(np.float32, copy=False)


def fuse(vectors: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """Weighted mean of L2-normalized tower vectors, renormalized (UniIR score-level fusion)."""
    stacked = np.stack([l2_normalize(v) for v in vectors])
    w = np.asarray(weights, dtype=np.float32).reshape(-1, *([1] * (stacked.ndim - 1)))
    return l2_normalize((stacked * w).sum(0) / max(float(w.sum()), 1e-12))


def to_base64(v: np.ndarray) -> str:
    """OpenAI's `encoding_format=base64`: little-endian float32 bytes."""
    return base64.b64encode(np.ascontiguousarray(v, dtype="<f4").tobytes()).decode("ascii")


def from_base64(s: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype="<f4")
