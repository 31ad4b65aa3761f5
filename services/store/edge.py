"""`EdgeBackend`: Qdrant Edge in-process, the embedded default. One Edge shard per physical collection.

Layout under `root` (= data_dir/edge):
    LOCK                      flock held while a process has the store open (a second one gets StoreLocked)
    meta.sqlite               collection records, query log, each shard's live generation (metadb.py)
    shards/<physical>/g<N>/   the Edge shard directory of generation N

Durability: Edge's WAL is always on, so everything `update()` returned from survives a process crash
(SIGKILL); a power loss keeps what the last `flush()` wrote. `flush_ms` = 0 flushes inside every write
call, before the caller is answered; N > 0 flushes dirty shards at most N ms later from a background
thread (docs/operations.md has the table).

Indexing without freezing the gateway. Edge holds the GIL for every call, and for the whole of
`optimize()` (minutes at 100k points), and has no background optimizer: points stay in a brute-force
segment until optimized. So the HNSW build never runs in this process. When a shard holds more than
`index_threshold` points not yet in an index, a builder thread (1) flushes it and copies its directory to
generation N+1 under the shard's write lock (reads go on; writes wait for the copy), (2) starts recording
the writes that follow, (3) runs `optimize()` on the copy in a child process, (4) opens the new
generation, replays the recorded writes in order (upserts replace whole points and deletes are by filter,
so the replay ends in the same state as the live shard), records generation N+1 in meta.sqlite (the
commit point) and serves it; the old handle is closed, and its directory deleted, a few seconds later.
A crash at any point leaves generation N authoritative; stray generations are removed at start-up.

One module over the 450-line guide on purpose: locking, generations, the flusher and the builder all
guard the same per-shard state under the same locks; split, each part would need the others' internals.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qdrant_client import models as qm

from services.errors import ConfigError, EmbedfleetError
from services.store.backend import RRF_K, SPARSE_VECTOR, Page, Record, Row, Search
from services.store.edge_shard import SPARSE, EdgeHit, EdgeRecord, EdgeShard, EdgeSpec
from services.store.filters import payload_keys
from services.store.metadb import MetaDB
from services.store.records import Layout

log = logging.getLogger("embedfleet.store")
assert SPARSE == SPARSE_VECTOR  # one name for the sparse vector on both engines
RETIRE_AFTER_S = 5.0  # an old generation's handle stays open this long for reads that already hold it


class StoreLocked(ConfigError):
    """The data directory is open in another process: Edge shards have one owner."""


@dataclass(frozen=True)
class EdgeTuning:
    """The engine's knobs, from Settings (store_*)."""

    flush_ms: int = 1000
    index_threshold: int = 20_000  # points outside any index before an HNSW build starts
    hnsw_ef: int = 256
    hnsw_m: int = 16
    hnsw_ef_construct: int = 200
    full_scan_threshold_kb: int = 10_000  # Qdrant's default
    build_threads: int = 1  # indexing threads of the build child process
    rescore_oversampling: float = 3.0


@dataclass(eq=False)
class _Shard:
    name: str
    gen: int
    spec: Layout
    edge: EdgeShard
    lock: threading.Lock = field(default_factory=threading.Lock)  # writes, flush, copy, swap
    recording: list[tuple[str, Any]] | None = None  # writes made while a build runs, to replay on it
    dirty: bool = False  # written since the last flush
    unchecked: int = 0  # points written since the builder last looked
    building: bool = False
    linked: frozenset[str] = frozenset()  # keys with payload-aware HNSW links in every built segment


def _edge_spec(spec: Layout, tuning: EdgeTuning) -> EdgeSpec:
    return EdgeSpec(
        dimension=spec.dimension,
        distance=spec.distance,  # type: ignore[arg-type]
        on_disk=spec.on_disk,
        quantization=spec.quantization,  # type: ignore[arg-type]
        bm25=spec.sparse == "bm25",
        indexing_threshold_kb=1,  # we decide when to optimize; when we do, index everything
        search_threads=1,
        hnsw_m=tuning.hnsw_m,
        hnsw_ef_construct=tuning.hnsw_ef_construct,
        full_scan_threshold_kb=tuning.full_scan_threshold_kb,
        indexing_threads=tuning.build_threads,
    )


def _record(r: EdgeRecord | EdgeHit) -> Record:
    return Record(r.id, dict(r.payload or {}), r.vector, getattr(r, "score", None), r.sparse)


class EdgeBackend:
    kind = "edge"

    def __init__(self, root: Path, tuning: EdgeTuning | None = None) -> None:
        self.root = root
        self.tuning = tuning or EdgeTuning()
        root.mkdir(parents=True, exist_ok=True)
        self._lockfile = self._exclusive(root / "LOCK")
        self.meta = MetaDB(root / "meta.sqlite")
        self._shards: dict[str, _Shard] = {}
        self._guard = threading.Lock()  # the dict of open shards
        self._retired: list[tuple[float, EdgeShard, Path]] = []
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._remove_stray_generations()
        self._threads = [
            threading.Thread(target=self._flusher, name="edge-flush", daemon=True),
            threading.Thread(target=self._builder, name="edge-index", daemon=True),
        ]
        for t in self._threads:
            t.start()

    # --- ownership --------------------------------------------------------------------------------
    @staticmethod
    def _exclusive(path: Path) -> Any:
        f = path.open("a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise StoreLocked(
                f"the data directory {path.parent} is in use by {holder}: an embedded store has one owning "
                "process (several processes need a Qdrant server: EMBEDFLEET_QDRANT_URL)"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}\n")
        f.flush()
        return f

    def _dir(self, name: str, gen: int) -> Path:
        return self.root / "shards" / name / f"g{gen}"

    def _remove_stray_generations(self) -> None:
        """Generations a crash left behind (a build not committed, a retired one not yet deleted), and
        directories of physicals no record names."""
        base = self.root / "shards"
        if not base.is_dir():
            return
        for folder in base.iterdir():
            row = self.meta.shard(folder.name)
            for gen_dir in folder.iterdir():
                if row is None or gen_dir.name != f"g{row[0]}":
                    shutil.rmtree(gen_dir, ignore_errors=True)
            if row is None:
                shutil.rmtree(folder, ignore_errors=True)

    def _shard(self, name: str) -> _Shard:
        """The open shard of a physical collection, opened on first use."""
        shard = self._shards.get(name)
        if shard is not None:
            return shard
        with self._guard:
            shard = self._shards.get(name)
            if shard is None:
                row = self.meta.shard(name)
                if row is None:
                    raise EmbedfleetError(f"no physical collection {name!r} in the embedded store")
                gen, spec, _ = row
                edge = EdgeShard.open(self._dir(name, gen))
                linked = self.meta.linked(name) or frozenset()
                shard = self._shards[name] = _Shard(name, gen, Layout(**spec), edge, linked=linked)
        return shard

    # --- physical collections ---------------------------------------------------------------------
    def create(self, physical: str, spec: Layout, indexes: Mapping[str, str]) -> None:
        path = self._dir(physical, 0)
        path.mkdir(parents=True)
        edge = EdgeShard.open(path, _edge_spec(spec, self.tuning))
        for key, schema in indexes.items():
            edge.create_payload_index(key, schema, is_tenant=False)  # type: ignore[arg-type]
        edge.flush()
        self.meta.put_shard(physical, 0, asdict(spec), dict(indexes))
        with self._guard:
            self._shards[physical] = _Shard(physical, 0, spec, edge)

    def drop(self, physical: str) -> None:
        with self._guard:
            shard = self._shards.pop(physical, None)
        if shard is not None:
            with shard.lock:
                shard.edge.close()
        self.meta.drop_shard(physical)
        shutil.rmtree(self.root / "shards" / physical, ignore_errors=True)

    def create_index(self, physical: str, field: str, schema: str) -> None:
        shard = self._shard(physical)
        with shard.lock:
            shard.edge.create_payload_index(field, schema)  # type: ignore[arg-type]
            row = self.meta.shard(physical)
            if row is not None:
                self.meta.put_shard(physical, row[0], row[1], {**row[2], field: schema})
            self._recorded(shard, "index", (field, schema))

    def set_alias(self, alias: str, physical: str | None) -> None:
        return None  # Edge has no aliases: the collection record names the live physical

    # --- writes: applied, recorded while a build runs, flushed per policy ---------------------------
    def _recorded(self, shard: _Shard, op: str, arg: Any) -> None:
        if shard.recording is not None:
            shard.recording.append((op, arg))
        shard.dirty = True
        if self.tuning.flush_ms == 0:
            shard.edge.flush()
            shard.dirty = False

    def _write(self, physical: str, op: str, arg: Any, apply: Callable[[EdgeShard], None]) -> None:
        shard = self._shard(physical)
        with shard.lock:
            apply(shard.edge)
            self._recorded(shard, op, arg)

    def upsert(self, physical: str, points: Sequence[Row]) -> None:
        batch = list(points)
        self._write(physical, "upsert", batch, lambda edge: _upsert(edge, batch))
        shard = self._shards.get(physical)
        if shard is not None:
            shard.unchecked += len(batch)
            if shard.unchecked >= self.tuning.index_threshold // 4:
                self._wake.set()

    def delete(self, physical: str, flt: qm.Filter) -> None:
        self._write(physical, "delete", flt, lambda edge: edge.delete_filter(flt))

    # --- reads: no lock (every Edge call holds the GIL; a retired handle stays open a while) --------
    def retrieve(self, physical: str, ids: Sequence[str], with_vectors: bool) -> list[Record]:
        return [_record(r) for r in self._shard(physical).edge.retrieve(list(ids), True, with_vectors)]

    def query(self, physical: str, search: Search) -> list[Record]:
        shard = self._shard(physical)
        edge, s = shard.edge, search
        quantized = shard.spec.quantization != "none"
        dense: dict[str, Any] = {
            "hnsw_ef": s.hnsw_ef or self.tuning.hnsw_ef,
            "rescore": True if quantized else None,
            "oversampling": self.tuning.rescore_oversampling if quantized else None,
            "exact": s.exact,
            # ACORN costs 3-4x where the graph has links for every key the filter names (measured at 100k)
            "acorn": s.acorn and not payload_keys(s.filter) <= shard.linked,
        }
        if s.mode == "sparse":
            assert s.sparse is not None
            hits = edge.query_sparse(
                s.sparse,
                s.filter,
                s.limit,
                s.with_payload,
                score_threshold=s.score_threshold,
                idf_corpus=s.idf_corpus,
            )
        elif s.mode == "hybrid":
            assert s.vector is not None and s.sparse is not None
            hits = edge.hybrid(
                s.vector,
                s.sparse,
                s.filter,
                s.limit,
                fusion=s.fusion,
                rrf_k=RRF_K,
                weights=s.weights,
                prefetch_limit=s.candidates,
                with_payload=s.with_payload,
                score_threshold=s.score_threshold,
                idf_corpus=s.idf_corpus,
                diversity=s.diversity,
                candidates=s.candidates,
                **dense,
            )
        elif s.diversity is not None:
            assert s.vector is not None
            hits = edge.mmr(
                s.vector,
                s.filter,
                s.limit,
                s.diversity,
                s.candidates or s.limit,
                s.with_payload,
                score_threshold=s.score_threshold,
                **dense,
            )
        else:
            assert s.vector is not None
            hits = edge.query(
                s.vector,
                s.filter,
                limit=s.limit,
                score_threshold=s.score_threshold,
                with_payload=s.with_payload,
                **dense,
            )
        return [_record(h) for h in hits]

    def scroll(self, physical: str, page: Page) -> tuple[list[Record], str | None]:
        edge = self._shard(physical).edge
        records, nxt = edge.scroll(page.limit, page.offset, page.filter, page.with_payload, page.with_vectors)
        return [_record(r) for r in records], nxt

    def count(self, physical: str, flt: qm.Filter) -> int:
        return self._shard(physical).edge.count(flt)

    # --- collection records and query log: meta.sqlite ----------------------------------------------
    def meta_get(self, key: str) -> dict[str, Any] | None:
        return self.meta.get(key)

    def meta_put(self, key: str, tenant: str, doc: Mapping[str, Any]) -> None:
        self.meta.put(key, tenant, doc)

    def meta_delete(self, key: str) -> None:
        self.meta.delete(key)

    def meta_list(self, tenant: str | None) -> list[dict[str, Any]]:
        return self.meta.list_docs(tenant)

    def log_put(self, key: str, slot_id: str, text: str, at: float) -> None:
        self.meta.log_put(key, slot_id, text, at)

    def log_recall(self, key: str, since: float, limit: int) -> list[str]:
        return self.meta.log_recall(key, since, limit)

    def log_forget(self, key: str) -> None:
        self.meta.log_forget(key)

    def log_entries(self) -> list[tuple[str, str, str, float]]:
        return self.meta.log_entries()

    # --- background: flushing and index builds ------------------------------------------------------
    def flush(self) -> None:
        for shard in list(self._shards.values()):
            with shard.lock:
                if shard.dirty:
                    shard.edge.flush()
                    shard.dirty = False

    def _flusher(self) -> None:
        period = max(self.tuning.flush_ms, 50) / 1000.0
        while not self._stop.wait(period):
            try:
                self.flush()
            except Exception:
                log.exception("flushing the embedded store failed")

    def unindexed(self, physical: str) -> int:
        info = self._shard(physical).edge.info()
        return info.points - info.indexed_vectors

    def _builder(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(5.0)
            self._wake.clear()
            self._close_retired()
            for shard in list(self._shards.values()):
                if self._stop.is_set():
                    return
                if shard.unchecked == 0 or shard.building:
                    continue
                shard.unchecked = 0
                try:
                    if self.unindexed(shard.name) >= self.tuning.index_threshold:
                        self.build_index(shard.name)
                except Exception:
                    log.exception("index build of %s failed; the shard keeps serving unindexed", shard.name)

    def build_index(self, physical: str, timeout_s: float = 3600.0) -> bool:
        """Build HNSW (and quantization) for a shard in a child process and swap it in; False if there
        was nothing to index. Reads and writes go on meanwhile (writes wait during the directory copy)."""
        shard = self._shard(physical)
        if shard.building:
            return False
        shard.building = True
        new = self._dir(physical, shard.gen + 1)
        try:
            with shard.lock:
                shard.edge.flush()
                shard.dirty = False
                shutil.rmtree(new, ignore_errors=True)
                subprocess.run(
                    ["cp", "-a", "--sparse=always", str(self._dir(physical, shard.gen)), str(new)], check=True
                )
                shard.recording = []
                row = self.meta.shard(physical)
                indexed = frozenset(row[2] if row else ())
                # a segment built earlier keeps the links it was built with: only keys every build saw count
                before = self.meta.linked(physical)
                linked = indexed if before is None else before & indexed
            started = time.perf_counter()
            child = subprocess.run(
                [sys.executable, "-m", "services.store.edge_build", str(new)],
                capture_output=True,
                text=True,
                timeout=timeout_s,
            )
            if child.returncode != 0:
                raise EmbedfleetError(f"index build of {physical} failed: {child.stderr[-2000:]}")
            built = child.stdout.strip().endswith("optimized")
            with shard.lock:
                edge = EdgeShard.open(new)
                for op, arg in shard.recording or []:
                    _replay(edge, op, arg)
                edge.flush()
                self.meta.put_shard(physical, shard.gen + 1, asdict(shard.spec), self.meta.shard(physical)[2])  # type: ignore[index]
                self.meta.put_linked(physical, linked)
                self._retired.append((time.monotonic(), shard.edge, self._dir(physical, shard.gen)))
                shard.edge, shard.gen, shard.recording, shard.linked = edge, shard.gen + 1, None, linked
            log.info(
                "index build of %s: %.1f s in a child process, swapped in",
                physical,
                time.perf_counter() - started,
            )
            return built
        except BaseException:
            shard.recording = None
            shutil.rmtree(new, ignore_errors=True)
            raise
        finally:
            shard.building = False

    def _close_retired(self, force: bool = False) -> None:
        keep = []
        for at, edge, path in self._retired:
            if force or time.monotonic() - at >= RETIRE_AFTER_S:
                with contextlib.suppress(Exception):
                    edge.close()
                shutil.rmtree(path, ignore_errors=True)
            else:
                keep.append((at, edge, path))
        self._retired = keep

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout=30)
        with self._guard:
            shards, self._shards = list(self._shards.values()), {}
        for shard in shards:
            with shard.lock:
                shard.edge.close()
        self._close_retired(force=True)
        self.meta.close()
        self._lockfile.close()


def _upsert(edge: EdgeShard, points: Sequence[Row]) -> None:
    edge.upsert([(pid, vec, payload, *rest) for pid, vec, payload, *rest in points])


def _replay(edge: EdgeShard, op: str, arg: Any) -> None:
    if op == "upsert":
        _upsert(edge, arg)
    elif op == "delete":
        edge.delete_filter(arg)
    elif op == "index":
        edge.create_payload_index(*arg)
