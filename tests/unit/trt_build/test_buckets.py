"""Bucket choice, row planning, padding and scatter: the torch-cuda engine's logic that needs no GPU."""

from __future__ import annotations

import numpy as np
import pytest

from services.registry import load_registry
from trt_build.buckets import (
    BucketSet,
    inverse,
    merge_rows,
    pad_into,
    plan,
    split_rows,
    split_sizes,
)

SPEC = load_registry().get("all-minilm-l6-v2")


def test_buckets_from_registry() -> None:
    b = BucketSet.from_spec(SPEC)
    assert b.batch == (1, 2, 4, 8, 16, 32, 64)
    assert b.seq == (16, 32, 64, 128, 256)
    assert b.max_tokens == SPEC.batching.max_batch_tokens
    assert (64, 256) not in b.pairs(), "above the token budget: never captured"
    assert (32, 256) in b.pairs() and (64, 128) in b.pairs()
    sizes = [p[0] * p[1] for p in b.pairs()]
    assert sizes == sorted(sizes, reverse=True), "largest first, so smaller graphs share its pool"


def test_non_power_of_two_limits_are_buckets() -> None:
    b = BucketSet.from_limits(24, 100)
    assert b.batch == (1, 2, 4, 8, 16, 24) and b.seq == (16, 32, 64, 100)
    assert BucketSet.from_limits(8, 8).seq == (8,)


def test_parse_round_trip() -> None:
    for b in (BucketSet.from_spec(SPEC), BucketSet((1, 3), (8,))):
        assert BucketSet.parse(str(b)) == b


def test_invalid_buckets() -> None:
    with pytest.raises(ValueError, match="increasing"):
        BucketSet((4, 2), (16,))


@pytest.mark.parametrize(
    ("batch", "seq", "expected"),
    [(1, 1, (1, 16)), (3, 17, (4, 32)), (64, 128, (64, 128)), (33, 100, (64, 128)), (20, 256, (32, 256))],
)
def test_choose_smallest_fitting(batch: int, seq: int, expected: tuple[int, int]) -> None:
    assert BucketSet.from_spec(SPEC).choose(batch, seq) == expected


def test_choose_refuses_what_does_not_fit() -> None:
    b = BucketSet.from_spec(SPEC)
    with pytest.raises(ValueError, match="exceeds"):
        b.choose(1, 257)
    with pytest.raises(ValueError, match="split"):
        b.choose(64, 256)


def test_plan_sorts_splits_and_covers_every_row() -> None:
    b = BucketSet.from_spec(SPEC)
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 257, size=150)
    chunks = plan(lengths, b)
    rows = np.concatenate([c.rows for c in chunks])
    assert sorted(rows.tolist()) == list(range(150))
    assert list(lengths[rows]) == sorted(lengths, reverse=True), "longest first"
    for c in chunks:
        assert b.allows(c.batch, c.seq) and len(c.rows) <= c.batch
        assert lengths[c.rows].max() <= c.seq
    assert len(chunks) > 2, "150 rows cannot fit one bucket: split"


def test_plan_short_rows_one_chunk() -> None:
    chunks = plan(np.array([3, 9, 5]), BucketSet.from_spec(SPEC))
    assert len(chunks) == 1 and (chunks[0].batch, chunks[0].seq) == (4, 16)
    assert chunks[0].rows.tolist() == [1, 2, 0]


def test_merge_compacts_left_and_right_padding() -> None:
    right = (np.array([[5, 6, 7], [8, 0, 0]]), np.array([[1, 1, 1], [1, 0, 0]]))
    left = (np.array([[0, 9, 4]]), np.array([[0, 1, 1]]))
    rows, sizes = merge_rows([right, left])
    assert [r.tolist() for r in rows] == [[5, 6, 7], [8], [9, 4]] and sizes == [2, 1]
    with pytest.raises(ValueError, match="must be equal"):
        merge_rows([(np.zeros((2, 3)), np.zeros((2, 4)))])


def test_pad_into_bucket_both_sides_and_in_place() -> None:
    rows = [np.array([1, 2, 3]), np.array([4])]
    ids, mask = pad_into(rows, 4, 5)
    assert ids.tolist() == [[1, 2, 3, 0, 0], [4, 0, 0, 0, 0], [0] * 5, [0] * 5]
    assert mask.sum(1).tolist() == [3, 1, 0, 0]
    buf = np.full((2, 4, 5), 7, dtype=np.int64)
    ids, mask = pad_into(rows, 4, 5, left=True, out=buf)
    assert ids.tolist()[0] == [0, 0, 1, 2, 3] and mask.tolist()[1] == [0, 0, 0, 0, 1]
    assert np.shares_memory(ids, buf) and buf[:, 2:].sum() == 0, "stale staging data is cleared"
    with pytest.raises(ValueError):
        pad_into(rows, 1, 5)
    with pytest.raises(ValueError):
        pad_into(rows, 4, 2)


def test_inverse_undoes_the_sort_and_split_sizes() -> None:
    lengths = np.array([4, 30, 2, 17, 9])
    order = np.concatenate([c.rows for c in plan(lengths, BucketSet.from_spec(SPEC))])
    sorted_vals = lengths[order]
    assert sorted_vals[inverse(order)].tolist() == lengths.tolist()
    parts = split_sizes(np.arange(5), [2, 0, 3])
    assert [p.tolist() for p in parts] == [[0, 1], [], [2, 3, 4]]


def test_split_rows() -> None:
    assert split_rows(5, 2) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert split_rows(0, 4) == []
