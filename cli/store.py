"""`embedfleet store ...`: maintenance of the vector store, run while the gateway is stopped (the embedded
store has one owning process).

    embedfleet store import-local [PATH]   copy a qdrant-client local-mode directory (the embedded store
                                            before Qdrant Edge; default data_dir/qdrant) into this store
    embedfleet store optimize              build the HNSW indexes of the embedded store now (each in a
                                            child process), instead of waiting for the threshold
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from services.config import Settings


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("store", help="vector store maintenance (stop the gateway first)")
    sub = p.add_subparsers(dest="store_command", required=True)
    imp = sub.add_parser("import-local", help="copy a qdrant-client local-mode directory into this store")
    imp.add_argument("path", nargs="?", type=Path, help="default: data_dir/qdrant")
    sub.add_parser("optimize", help="build the embedded store's HNSW indexes now")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.store_command == "import-local":
        return import_local(args.path or settings.data_dir / "qdrant", settings)
    return optimize(settings)


def import_local(path: Path, settings: Settings) -> int:
    from services.store import ServerBackend, open_store
    from services.store.transfer import copy_store

    if not path.is_dir():
        print(f"no local-mode directory at {path}", file=sys.stderr)
        return 2
    src = ServerBackend.local(str(path))
    dst = open_store(settings)
    try:
        report = copy_store(
            src, dst.backend, lambda phys, n: print(f"\r{phys}: {n} points", end="", flush=True)
        )
    finally:
        dst.close()
        src.close()
    print()
    print(
        f"copied {report.collections} collections, {sum(report.points.values())} points (counts verified: "
        f"{report.points}), {report.query_log} logged queries into the {dst.kind} store"
    )
    return 0


def optimize(settings: Settings) -> int:
    from services.store import EdgeBackend, edge_tuning

    if settings.qdrant_url:
        print("a Qdrant server optimizes on its own", file=sys.stderr)
        return 2
    backend = EdgeBackend(settings.data_dir / "edge", edge_tuning(settings))
    try:
        for name in backend.meta.shards():
            left = backend.unindexed(name)
            if left:
                print(f"{name}: indexing {left} points ...", flush=True)
                backend.build_index(name)
    finally:
        backend.close()
    return 0
