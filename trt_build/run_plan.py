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
