"""`python -m services.store.edge_build DIR`: optimize one Edge shard directory (HNSW, quantization).

Run by `EdgeBackend.build_index` as a child process on a copy of a live shard: `optimize()` holds the GIL
for its whole run (minutes at 100k points), so it must never run in the serving process.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from services.store.edge_shard import EdgeShard


def main(argv: list[str]) -> int:
    path = Path(argv[0])
    started = time.perf_counter()
    with EdgeShard.open(path) as shard:
        changed = shard.optimize()
        info = shard.info()
    status = "optimized" if changed else "unchanged"
    print(
        f"{path}: {info.points} points, {info.indexed_vectors} indexed, {info.segments} segments, "
        f"{time.perf_counter() - started:.1f} s, {status}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
