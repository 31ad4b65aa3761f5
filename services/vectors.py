"""Vector arithmetic shared by every path: normalization, Matryoshka truncation, fusion, reranker scores,
output encodings (float, int8/uint8 scalar quantization, binary/ubinary sign bits) and their wire form.

The quantized encodings follow sentence-transformers' `quantize_embeddings` bit for bit (golden-tested),
which is also Cohere's `embedding_types` convention for binary/ubinary: sign bits (> 0) packed big-endian
into bytes, `binary` as uint8 - 128 in int8. int8/uint8 map each dimension's calibrated [low, high]
onto 256 buckets, so they need `calibrate` on a sample of the model's finished vectors first (the caller
persists the ranges; they only fit vectors finished the same way: same model, dimensions, normalization).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Encoding = Literal["float", "int8", "uint8", "binary", "ubinary"]
ENCODINGS: tuple[Encoding, ...] = ("float", "int8", "uint8", "binary", "ubinary")
_WIRE_DTYPE: dict[str, str] = {"float": "<f4", "int8": "i1", "uint8": "u1", "binary": "i1", "ubinary": "u1"}


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


def activate_scores(logits: np.ndarray, activation: Literal["none", "sigmoid"]) -> np.ndarray:
    """A reranker's raw logits (Triton's [n, 1] or [n]) as the registry's score, [n] float32.

    Sigmoid as tanh, which cannot overflow for large |logit|; equals torch.sigmoid, the function
    sentence-transformers' CrossEncoder applies.
    """
    x = np.asarray(logits, dtype=np.float64).reshape(-1)
    if activation == "sigmoid":
        x = 0.5 * (1.0 + np.tanh(0.5 * x))
    return x.astype(np.float32)


@dataclass(frozen=True, eq=False)
class QuantRanges:
    """Per-dimension [low, high] of a calibration sample: sentence-transformers' `ranges`, shape (2, dim)."""

    low: np.ndarray  # float32 [dim]
    high: np.ndarray
    count: int  # vectors in the sample it was calibrated on

    @property
    def dimension(self) -> int:
        return int(self.low.shape[0])

    def as_array(self) -> np.ndarray:
        return np.vstack((self.low, self.high))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe; float32 -> float -> float32 round-trips exactly."""
        return {"low": self.low.tolist(), "high": self.high.tolist(), "count": self.count}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantRanges:
        low, high = (np.asarray(data[k], dtype=np.float32) for k in ("low", "high"))
        if low.ndim != 1 or low.shape != high.shape or not np.all(low <= high):
            raise ValueError("quantization ranges need equal-length low <= high lists")
        return cls(low, high, int(data.get("count", 0)))


def calibrate(sample: np.ndarray) -> QuantRanges:
    """Ranges from a sample of the model's vectors (sentence-transformers warns below 100 of them)."""
    sample = np.asarray(sample)
    if sample.ndim != 2 or sample.shape[0] < 2 or not np.isfinite(sample).all():
        raise ValueError("calibration needs at least two finite vectors as a [n, dim] array")
    return QuantRanges(
        sample.min(axis=0).astype(np.float32), sample.max(axis=0).astype(np.float32), sample.shape[0]
    )


def quantize(v: np.ndarray, ranges: QuantRanges | None, kind: Encoding) -> np.ndarray:
    """`kind` of float vectors [..., dim]: sentence-transformers' quantize_embeddings, same arithmetic.

    int8/uint8 (ranges required): floor((v - low) / step) clipped to 0..255 with step = (high - low) / 255
    (1 where a dimension never varied), int8 shifted by -128. binary/ubinary: [..., ceil(dim / 8)] bytes.
    """
    if kind == "float":
        return np.asarray(v, dtype=np.float32)
    if kind in ("binary", "ubinary"):
        packed = np.packbits(v > 0, axis=-1)
        return packed if kind == "ubinary" else (packed.astype(np.int16) - 128).astype(np.int8)
    if kind not in ("int8", "uint8"):
        raise ValueError(f"unknown encoding {kind!r} (known: {', '.join(ENCODINGS)})")
    if ranges is None or ranges.dimension != v.shape[-1]:
        got = "none" if ranges is None else f"{ranges.dimension} dimensions"
        raise ValueError(f"{kind} needs calibrated ranges for {v.shape[-1]} dimensions, got {got}")
    steps = (ranges.high - ranges.low) / 255
    steps = np.where(steps == 0, 1, steps)
    buckets = np.clip(np.floor((v - ranges.low) / steps), 0, 255)
    return buckets.astype(np.uint8) if kind == "uint8" else (buckets - 128).astype(np.int8)


def encode_base64(v: np.ndarray, kind: Encoding = "float") -> str:
    """The encoding's bytes (float: little-endian float32, OpenAI's `encoding_format=base64`), base64."""
    dtype = np.dtype(_WIRE_DTYPE[kind])
    if kind != "float" and np.asarray(v).dtype != dtype:
        raise ValueError(f"{kind} vectors are {dtype}, got {np.asarray(v).dtype}: quantize first")
    return base64.b64encode(np.ascontiguousarray(v, dtype=dtype).tobytes()).decode("ascii")


def decode_base64(s: str, kind: Encoding = "float") -> np.ndarray:
    """Inverse of encode_base64: a flat array (binary kinds: packed bytes, dimension / 8 of them)."""
    return np.frombuffer(base64.b64decode(s), dtype=_WIRE_DTYPE[kind])


def to_base64(v: np.ndarray) -> str:
    """OpenAI's `encoding_format=base64`: little-endian float32 bytes."""
    return encode_base64(v, "float")


def from_base64(s: str) -> np.ndarray:
    return decode_base64(s, "float")
