"""The embedded store's own small database (SQLite): collection records, the query log, shard generations.

Qdrant Edge has no collections, aliases or metadata: one shard is one directory. What the server keeps in
`ef_meta`/`ef_querylog` collections lives here instead, and every change of a collection record is one
SQLite transaction, so a cutover (live physical + migration state) is atomic and survives a crash.
WAL journal mode: readers never wait for the writer; `synchronous=NORMAL` is durable across a process
crash, and across power loss up to the last checkpoint (the same promise as the shards' own WAL).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS collections (key TEXT PRIMARY KEY, tenant TEXT NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS collections_tenant ON collections (tenant);
CREATE TABLE IF NOT EXISTS querylog (slot TEXT PRIMARY KEY, key TEXT NOT NULL, text TEXT NOT NULL,
                                     at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS querylog_key ON querylog (key, at);
CREATE TABLE IF NOT EXISTS shards (name TEXT PRIMARY KEY, gen INTEGER NOT NULL, spec TEXT NOT NULL,
                                   indexes TEXT NOT NULL, built_at REAL);
CREATE TABLE IF NOT EXISTS linked (name TEXT PRIMARY KEY, keys TEXT NOT NULL);
"""


class MetaDB:
    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()  # one connection shared by the gateway's threads

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # --- collection records -----------------------------------------------------------------------
    def get(self, key: str) -> dict[str, Any] | None:
        rows = self._run("SELECT doc FROM collections WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else None

    def put(self, key: str, tenant: str, doc: Mapping[str, Any]) -> None:
        self._run(
            "INSERT INTO collections (key, tenant, doc) VALUES (?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET tenant = excluded.tenant, doc = excluded.doc",
            (key, tenant, json.dumps(dict(doc))),
        )

    def delete(self, key: str) -> None:
        self._run("DELETE FROM collections WHERE key = ?", (key,))

    def list_docs(self, tenant: str | None) -> list[dict[str, Any]]:
        if tenant is None:
            rows = self._run("SELECT doc FROM collections ORDER BY key")
        else:
            rows = self._run("SELECT doc FROM collections WHERE tenant = ? ORDER BY key", (tenant,))
        return [json.loads(r[0]) for r in rows]

    # --- query log --------------------------------------------------------------------------------
    def log_put(self, key: str, slot: str, text: str, at: float) -> None:
        self._run(
            "INSERT INTO querylog (slot, key, text, at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (slot) DO UPDATE SET key = excluded.key, text = excluded.text, at = excluded.at",
            (slot, key, text, at),
        )

    def log_recall(self, key: str, since: float, limit: int) -> list[str]:
        self._run("DELETE FROM querylog WHERE key = ? AND at < ?", (key, since))
        rows = self._run("SELECT text FROM querylog WHERE key = ? ORDER BY slot LIMIT ?", (key, limit))
        return [r[0] for r in rows]

    def log_forget(self, key: str) -> None:
        self._run("DELETE FROM querylog WHERE key = ?", (key,))

    def log_entries(self) -> list[tuple[str, str, str, float]]:
        return [
            (r[0], r[1], r[2], r[3])
            for r in self._run("SELECT key, slot, text, at FROM querylog ORDER BY slot")
        ]

    # --- shards: which generation directory serves each physical collection ----------------------
    def shard(self, name: str) -> tuple[int, dict[str, Any], dict[str, str]] | None:
        rows = self._run("SELECT gen, spec, indexes FROM shards WHERE name = ?", (name,))
        return (int(rows[0][0]), json.loads(rows[0][1]), json.loads(rows[0][2])) if rows else None

    def shards(self) -> list[str]:
        return [r[0] for r in self._run("SELECT name FROM shards")]

    def put_shard(self, name: str, gen: int, spec: Mapping[str, Any], indexes: Mapping[str, str]) -> None:
        self._run(
            "INSERT INTO shards (name, gen, spec, indexes, built_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET gen = excluded.gen, spec = excluded.spec, "
            "indexes = excluded.indexes, built_at = excluded.built_at",
            (name, gen, json.dumps(dict(spec)), json.dumps(dict(indexes)), time.time()),
        )

    def drop_shard(self, name: str) -> None:
        self._run("DELETE FROM shards WHERE name = ?", (name,))
        self._run("DELETE FROM linked WHERE name = ?", (name,))

    def linked(self, name: str) -> frozenset[str] | None:
        """Payload keys every HNSW graph of the shard has payload-aware links for (None: never built)."""
        rows = self._run("SELECT keys FROM linked WHERE name = ?", (name,))
        return frozenset(json.loads(rows[0][0])) if rows else None

    def put_linked(self, name: str, keys: frozenset[str]) -> None:
        self._run(
            "INSERT INTO linked (name, keys) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET keys = excluded.keys",
            (name, json.dumps(sorted(keys))),
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()
