"""The CPU engine's split of a sorted batch into padded runs (optimal, within its limits, every row once) and
their sharing among workers (every row once, no worker waiting on more than the plain sharing gives it)."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from trt_build.run_plan import dearest_first, plan_runs, run_cost, share_runs


def cost(lengths: list[int], runs: list[tuple[int, int]], run_cost: int) -> int:
    return sum((stop - start) * max(lengths[start], 1) + run_cost for start, stop in runs)


def every_split(n: int) -> list[list[tuple[int, int]]]:
    out = []
    for cuts in itertools.product((False, True), repeat=n - 1):
        bounds = [0, *(i + 1 for i, c in enumerate(cuts) if c), n]
        out.append(list(itertools.pairwise(bounds)))
    return out


def allowed(lengths: list[int], runs: list[tuple[int, int]], max_rows: int, max_tokens: int) -> bool:
    return all(
        stop - start == 1 or (stop - start <= max_rows and (stop - start) * lengths[start] <= max_tokens)
        for start, stop in runs
    )


@pytest.mark.parametrize("seed", range(40))
def test_the_plan_is_the_cheapest_allowed_split(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(1, 9)
    lengths = sorted((rng.randint(1, 80) for _ in range(n)), reverse=True)
    max_rows, max_tokens, run_cost = rng.randint(1, 6), rng.randint(40, 300), rng.choice((0, 8, 32, 200))
    runs = plan_runs(np.array(lengths), max_rows, max_tokens, run_cost)
    assert [r for run in runs for r in range(*run)] == list(range(n))  # every row once, in order
    assert allowed(lengths, runs, max_rows, max_tokens)
    splits = [s for s in every_split(n) if allowed(lengths, s, max_rows, max_tokens)]
    best = min(cost(lengths, s, run_cost) for s in splits)
    assert cost(lengths, runs, run_cost) == best


def test_a_long_row_runs_alone_and_short_rows_share_a_run() -> None:
    lengths = np.array([120, 14, 13, 13, 12, 12, 11, 10])
    assert plan_runs(lengths, 64, 8192, run_cost=32) == [(0, 1), (1, 8)]
    # with calls this cheap, each distinct length gets its own run; with calls dear, one run
    assert len(plan_runs(lengths, 64, 8192, run_cost=0)) == 6
    assert plan_runs(lengths, 64, 8192, run_cost=10_000) == [(0, 8)]


def test_limits_split_a_run_and_a_row_over_the_budget_still_runs() -> None:
    assert plan_runs(np.full(10, 16), 4, 8192, run_cost=1000) == [(0, 2), (2, 6), (6, 10)]
    assert plan_runs(np.array([500, 20, 20]), 64, 100, run_cost=1000) == [(0, 1), (1, 3)]
    assert plan_runs(np.array([], dtype=np.int64), 64, 8192) == []


def span(lengths: np.ndarray, shares: list[list[tuple[int, int]]]) -> int:
    return max(sum(run_cost(lengths, *run) for run in share) for share in shares)


@pytest.mark.parametrize("seed", range(30))
def test_shares_hold_every_row_once_and_wait_no_longer_than_runs_shared_whole(seed: int) -> None:
    rng = np.random.default_rng(seed)
    lengths = np.sort(rng.integers(1, 120, int(rng.integers(1, 80))))[::-1]
    runs = plan_runs(lengths, 64, 8192)
    workers = int(rng.integers(1, 5))
    shares = share_runs(runs, lengths, workers)
    assert len(shares) == workers
    rows = sorted(r for share in shares for start, stop in share for r in range(start, stop))
    assert rows == list(range(len(lengths)))
    whole = [[] for _ in range(workers)]  # the runs as planned, dearest first to the least loaded
    for run in sorted(runs, key=lambda r: -run_cost(lengths, *r)):
        min(whole, key=lambda s: sum(run_cost(lengths, *r) for r in s)).append(run)
    assert span(lengths, shares) <= span(lengths, whole)


def test_one_run_is_cut_for_two_workers_and_one_row_is_not() -> None:
    lengths = np.full(20, 16)
    shares = share_runs([(0, 20)], lengths, 2)
    assert sorted(shares) == [[(0, 10)], [(10, 20)]]
    assert share_runs([(0, 1)], np.array([30]), 2) == [[(0, 1)], []]
    assert share_runs([(0, 20)], lengths, 1) == [[(0, 20)]]
    # a long row alone against many short ones: the short run is cut only while that shortens the wait
    lengths = np.array([200, *[10] * 12])
    shares = share_runs(plan_runs(lengths, 64, 8192), lengths, 2)
    assert [(0, 1)] in shares and span(lengths, shares) == run_cost(lengths, 0, 1)


@pytest.mark.parametrize("seed", range(10))
def test_the_queue_holds_every_cut_run_once_dearest_first(seed: int) -> None:
    rng = np.random.default_rng(seed)
    lengths = np.sort(rng.integers(1, 120, int(rng.integers(2, 80))))[::-1]
    shares = share_runs(plan_runs(lengths, 64, 8192), lengths, 2)
    queue = dearest_first(shares, lengths)
    assert sorted(queue) == sorted(run for share in shares for run in share)
    costs = [run_cost(lengths, *run) for run in queue]
    assert costs == sorted(costs, reverse=True)
