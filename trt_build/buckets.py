"""(batch, sequence) buckets for static-shape engines (CUDA graphs), and the row logic around them.

A CUDA graph replays one fixed shape, so the torch-cuda engine captures a small set of shapes at load
time and pads every chunk of rows up to the smallest one that fits. This module holds everything about
that which needs no GPU (bucket choice, merging requests, sorting rows by length, splitting, padding,
undoing the sort), so it is unit-tested on CPU and shared by the engine and the bench.

Pure numpy and stdlib on purpose: the build copies this file next to the Triton python-backend
`model.py`, whose stub process cannot import the project.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

if TYPE_CHECKING:
    from services.registry import ModelSpec

MIN_SEQ_BUCKET = 16


class Rows(Protocol):
    """What split_sizes needs: numpy arrays and torch tensors alike slice along their first axis."""

    def __getitem__(self, key: slice, /) -> Any: ...


T = TypeVar("T", bound=Rows)


def _doubling(start: int, limit: int) -> tuple[int, ...]:
    """start, 2*start, ... below limit, then limit itself: the shapes a graph set needs to cover."""
    out: list[int] = []
    value = start
    while value < limit:
        out.append(value)
        value *= 2
    out.append(limit)
    return tuple(out)


@dataclass(frozen=True)
class BucketSet:
    """Batch and sequence buckets; a pair (B, S) exists when B * S <= max_tokens (or S is the
    smallest batch bucket), so graphs are never captured for shapes the token budget forbids."""

    batch: tuple[int, ...]
    seq: tuple[int, ...]
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        for name, values in (("batch", self.batch), ("seq", self.seq)):
            if not values or list(values) != sorted(set(values)) or values[0] < 1:
                raise ValueError(f"{name} buckets must be increasing positive integers, got {values}")

    @classmethod
    def from_limits(
        cls, max_batch_size: int, max_seq_length: int, max_tokens: int | None = None
    ) -> BucketSet:
        seq_start = min(MIN_SEQ_BUCKET, max_seq_length)
        return cls(_doubling(1, max_batch_size), _doubling(seq_start, max_seq_length), max_tokens)

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> BucketSet:
        """From the registry's batching block: the same limits as the gateway batcher and Triton."""
        b = spec.batching
        return cls.from_limits(b.max_batch_size, spec.max_seq_length, b.max_batch_tokens)

    @classmethod
    def parse(cls, text: str) -> BucketSet:
        """Inverse of `__str__`: `"1,2,4|16,32|8192"` (the third field is optional)."""
        fields = text.split("|")
        tokens = int(fields[2]) if len(fields) > 2 and fields[2] else None
        return cls(
            tuple(int(x) for x in fields[0].split(",")), tuple(int(x) for x in fields[1].split(",")), tokens
        )

    def __str__(self) -> str:
        return "|".join(
            [",".join(map(str, self.batch)), ",".join(map(str, self.seq)), str(self.max_tokens or "")]
        )

    @property
    def max_batch(self) -> int:
        return self.batch[-1]

    @property
    def max_seq(self) -> int:
        return self.seq[-1]

    def allows(self, b: int, s: int) -> bool:
        return (
            b in self.batch
            and s in self.seq
            and (self.max_tokens is None or b * s <= self.max_tokens or b == self.batch[0])
        )

    def pairs(self) -> list[tuple[int, int]]:
        """Every captured shape, largest first (captured first, so smaller graphs reuse its memory pool)."""
        return sorted(
            ((b, s) for b in self.batch for s in self.seq if self.allows(b, s)),
            key=lambda p: (p[0] * p[1], p),
            reverse=True,
        )

    def seq_bucket(self, length: int) -> int:
        for s in self.seq:
            if s >= length:
                return s
        raise ValueError(f"sequence of {length} tokens exceeds the largest bucket {self.max_seq}")

    def max_rows(self, s: int) -> int:
        """The largest batch bucket captured for sequence bucket s."""
        return max(b for b in self.batch if self.allows(b, s))

    def choose(self, batch: int, seq: int) -> tuple[int, int]:
        """Smallest (B, S) with B >= batch and S >= seq; ValueError when none fits (split first)."""
        s = self.seq_bucket(seq)
        for b in self.batch:
            if b >= batch and self.allows(b, s):
                return b, s
        raise ValueError(f"no bucket holds {batch} rows of {s} tokens; split to {self.max_rows(s)} rows")


@dataclass(frozen=True)
class Chunk:
    """One engine call: `rows` (indices into the merged rows, longest first) padded to (batch, seq)."""

    rows: np.ndarray
    batch: int
    seq: int


def plan(lengths: np.ndarray, buckets: BucketSet) -> list[Chunk]:
    """Sort rows by length (longest first) and cut them into chunks that each fit a bucket.

    Sorting is what keeps padding low when requests of different lengths are merged; a chunk takes as
    many rows as the bucket of its longest row allows, so a too-large batch is split here too.
    """
    order = np.argsort(-np.asarray(lengths), kind="stable")
    chunks: list[Chunk] = []
    start = 0
    while start < len(order):
        s = buckets.seq_bucket(max(int(lengths[order[start]]), 1))
        n = min(buckets.max_rows(s), len(order) - start)
        b, s = buckets.choose(n, s)
        chunks.append(Chunk(order[start : start + n], b, s))
        start += n
    return chunks


def split_rows(total: int, max_rows: int) -> list[slice]:
    """Contiguous slices of at most max_rows: how a client splits a batch larger than its buffers."""
    return [slice(i, min(i + max_rows, total)) for i in range(0, total, max_rows)]


def merge_rows(arrays: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[list[np.ndarray], list[int]]:
    """All requests' [n, width] ids/mask pairs -> one list of unpadded token rows, and rows per request.

    Rows are compacted (tokens where mask is set) so right- and left-padded inputs both re-pad cleanly.
    """
    rows: list[np.ndarray] = []
    sizes: list[int] = []
    for ids, mask in arrays:
        if ids.shape != mask.shape or ids.ndim != 2:
            raise ValueError(f"input_ids {ids.shape} and attention_mask {mask.shape} must be equal [n, seq]")
        keep = mask.astype(bool)
        rows.extend(ids[i][keep[i]] for i in range(ids.shape[0]))
        sizes.append(ids.shape[0])
    return rows, sizes


def pad_into(
    rows: Sequence[np.ndarray], batch: int, seq: int, left: bool = False, out: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Pad token rows to exactly [batch, seq] (ids 0, mask 0); rows beyond len(rows) are all padding.

    Unlike services.batcher.pad_tokens (pad to the longest row) the width here is the bucket's; `out`
    ([2, batch, seq] int64, e.g. a view of pinned memory) is filled in place when given.
    """
    if len(rows) > batch:
        raise ValueError(f"{len(rows)} rows do not fit a batch bucket of {batch}")
    if out is None:
        out = np.zeros((2, batch, seq), dtype=np.int64)
    else:
        out[...] = 0
    ids, mask = out[0], out[1]
    for i, r in enumerate(rows):
        n = len(r)
        if n > seq:
            raise ValueError(f"row of {n} tokens does not fit a sequence bucket of {seq}")
        cols = slice(seq - n, seq) if left else slice(0, n)
        ids[i, cols] = r
        mask[i, cols] = 1
    return ids, mask


def inverse(order: np.ndarray) -> np.ndarray:
    """Positions that undo `order`: sorted_out[inverse(order)] is back in request order."""
    inv = np.empty_like(order)
    inv[order] = np.arange(len(order))
    return inv


def split_sizes(total: T, sizes: Sequence[int]) -> list[T]:
    """Cut merged outputs (numpy or torch) back into one array per request."""
    bounds = np.cumsum([0, *sizes])
    return [total[bounds[i] : bounds[i + 1]] for i in range(len(sizes))]
