"""How a batch of token rows is split into model calls on CPU: the fewest padded tokens, at a price per call.

The CPU engine's time is close to linear in the padded tokens of each call, plus a small fixed cost per
call. The gateway sends what was queued (arrival order, lengths mixed); padding that whole batch to its
longest row costs 2.7x the real tokens on typical sentences, and a greedy split by a padding ratio still
1.4x. Over rows sorted longest first, the split into contiguous runs that minimises
`sum(rows x longest) + run_cost x calls` is found exactly by a small dynamic program (n <= a few hundred
rows, vectorised over the start of the last run). Measured on all-MiniLM-L6-v2, 2,000 sentences in
arrival-order batches of 32, ONNX Runtime on 2 threads (bench/README.md): the greedy split 232-253
sentences/s, this plan with `run_cost` 32 tokens 326-328, the same sentences sorted globally (what no
server sees) 291-345.

A batch of several rows is then shared among single-thread workers (`share_runs`) rather than run on one
multi-threaded session: an intra-op thread pool meets at every operator, so a core taken for a moment by
the gateway or the client stalls the whole call, and the threads' hand-offs cost CPU of their own; single
threads on separate runs meet once a batch. Measured offline (bench/README.md, "Sharing a batch"): 2
single-thread workers 215-224 sentences/s at 8.1-8.4 ms of CPU a sentence vs 162-181 at 9.5-10.0 ms for
one session of 2 intra-op threads, and 178-185 vs 144-158 with a process taking ~15% of each core in short
bursts. A single row cannot be shared and still gains from intra-op threads (its latency is the
unloaded floor), so the engine keeps a multi-threaded session for it.

The workers pull the runs from one queue, dearest first (`dearest_first`), rather than each running a share
fixed in advance: a share is balanced in tokens, not in the time its worker gets, and a worker whose core
the gateway takes for a few milliseconds made the other wait at the end of every batch. Served 64 x 1 in
turns (bench/README.md): 198 / 194 / 201 sentences/s pulled vs 180 / 182 / 195 with fixed shares.

Imports only numpy: it runs in the Triton python-backend stub beside model.py.
"""

from __future__ import annotations

import numpy as np

RUN_COST_TOKENS = 32  # the fixed cost of one ORT call, in padded tokens (measured best of 16-96)


def plan_runs(
    lengths: np.ndarray, max_rows: int, max_tokens: int, run_cost: int = RUN_COST_TOKENS
) -> list[tuple[int, int]]:
    """[start, stop) runs over `lengths` (sorted longest first) minimising padded tokens + `run_cost` a
    run, each run at most `max_rows` rows and `max_tokens` padded tokens (a single row always fits)."""
    n = len(lengths)
    if n == 0:
        return []
    longest = np.maximum(np.asarray(lengths, dtype=np.int64), 1)  # a run from i is padded to row i
    best = np.zeros(n + 1, dtype=np.float64)
    start_of = np.zeros(n + 1, dtype=np.int64)
    starts = np.arange(n)
    for stop in range(1, n + 1):
        i = starts[:stop]
        rows = stop - i
        cost = best[:stop] + rows * longest[:stop] + run_cost
        cost[(rows > max_rows) | (rows * longest[:stop] > max_tokens)] = np.inf
        cost[stop - 1] = best[stop - 1] + longest[stop - 1] + run_cost  # one row alone always fits
        k = int(np.argmin(cost))
        best[stop], start_of[stop] = cost[k], k
    runs = []
    stop = n
    while stop > 0:
        runs.append((int(start_of[stop]), stop))
        stop = int(start_of[stop])
    return runs[::-1]


def run_cost(lengths: np.ndarray, start: int, stop: int, per_run: int = RUN_COST_TOKENS) -> int:
    """Padded tokens of run [start, stop) over lengths sorted longest first, plus the price of a call."""
    return (stop - start) * max(int(lengths[start]), 1) + per_run


def share_runs(
    runs: list[tuple[int, int]], lengths: np.ndarray, workers: int, per_run: int = RUN_COST_TOKENS
) -> list[list[tuple[int, int]]]:
    """`runs` (from `plan_runs`) shared among `workers`, one list of runs a worker (some may be empty).

    Runs go dearest first to the least loaded worker; then, while it shortens the dearest worker's share
    (what the batch waits for), one run of two or more rows is cut in two where the parts cost most
    evenly (a cut costs one more call), the runs shared again. Each try costs O(rows): n <= a few hundred.
    """

    def cost(run: tuple[int, int]) -> int:
        return run_cost(lengths, run[0], run[1], per_run)

    def share(runs: list[tuple[int, int]]) -> tuple[int, list[list[tuple[int, int]]]]:
        shares: list[list[tuple[int, int]]] = [[] for _ in range(max(workers, 1))]
        loads = [0] * len(shares)
        for run in sorted(runs, key=cost, reverse=True):
            k = loads.index(min(loads))
            shares[k].append(run)
            loads[k] += cost(run)
        return max(loads), shares

    def cut(run: tuple[int, int]) -> list[tuple[int, int]]:
        start, stop = run
        at = min(range(start + 1, stop), key=lambda c: max(cost((start, c)), cost((c, stop))))
        return [(start, at), (at, stop)]

    runs = list(runs)
    best, shares = share(runs)
    while True:
        tries = [[*runs[:i], *cut(r), *runs[i + 1 :]] for i, r in enumerate(runs) if r[1] - r[0] > 1]
        scored = [(share(t), t) for t in tries]
        if not scored:
            return shares
        (span, split), split_runs = min(scored, key=lambda x: x[0][0])
        if span >= best:
            return shares
        best, shares, runs = span, split, split_runs


def dearest_first(
    shares: list[list[tuple[int, int]]], lengths: np.ndarray, per_run: int = RUN_COST_TOKENS
) -> list[tuple[int, int]]:
    """The runs of `share_runs`' shares (cut for balance) as one queue, dearest first: workers that each
    take the next run when free finish together whatever time each of them gets from the cores."""
    runs = [run for share in shares for run in share]
    return sorted(runs, key=lambda run: run_cost(lengths, run[0], run[1], per_run), reverse=True)
