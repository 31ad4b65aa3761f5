"""Bulk indexing jobs: documents split into chunks stored in the blob store, processed idempotently.

A chunk is the unit of work and of retry: re-running it upserts the same point ids, and its completion
is recorded in a set, so a redelivered message (worker SIGKILLed mid-chunk, `acks_late`) neither loses nor
duplicates anything. The job record lives in Redis when a broker is configured (gateway and workers share
it) or in SQLite under the data directory for the embedded default, so a job the API accepted survives a
gateway restart and is resumed (services.jobs.dispatch).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from services.config import Settings
from services.errors import NotFound

RUNNING = frozenset({"queued", "running"})  # a job whose chunks are not all done


@dataclass
class Job:
    id: str
    tenant: str
    collection: str
    chunks: list[str]  # blob digests of JSON document lists
    sizes: list[int]
    state: str = "queued"
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    done_chunks: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lane: str = "backfill"

    @property
    def total(self) -> int:
        return sum(self.sizes)

    @property
    def done(self) -> int:
        return sum(self.sizes[i] for i in set(self.done_chunks))

    @property
    def running(self) -> bool:
        return self.state in RUNNING

    def public(self) -> dict[str, Any]:
        """State and progress: done/total, rate (documents/s), ETA (s), errors."""
        elapsed = ((self.finished_at or time.time()) - self.started_at) if self.started_at else 0.0
        rate = self.done / elapsed if elapsed > 0 else 0.0
        remaining = self.total - self.done
        return {
            "id": self.id,
            "collection": self.collection,
            "state": self.state,
            "done": self.done,
            "total": self.total,
            "progress": self.done / self.total if self.total else 1.0,
            "rate": rate,
            "eta_s": remaining / rate if rate > 0 else None,
            "errors": self.errors[-20:],
            "error_count": len(self.errors),
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }


class JobStore(Protocol):
    def save(self, job: Job) -> None: ...

    def get(self, job_id: str, tenant: str | None = None) -> Job: ...

    def chunk_done(self, job_id: str, index: int) -> Job: ...

    def add_error(self, job_id: str, message: str) -> None: ...

    def running(self, tenant: str | None, collection: str | None = None) -> list[Job]:
        """Jobs not finished: of a tenant's collection, or (tenant None) all, for start-up recovery."""

    def claim(self, key: str) -> bool:
        """Take `key` (a job, a migration) for this process; False when a live one holds it."""

    def close(self) -> None: ...


def _not_found(job_id: str) -> NotFound:
    return NotFound(f"job {job_id!r} not found", field="job_id")


def settle(job: Job) -> bool:
    """Mark a job finished when every chunk is done; True if its record changed."""
    if job.running and len(set(job.done_chunks)) == len(job.chunks):
        job.state = "failed" if job.errors else "succeeded"
        job.finished_at = time.time()
        return True
    return False


class SqliteJobStore:
    """Embedded default: jobs in `data_dir/jobs.sqlite`; chunk completions are rows, so a chunk recorded
    done survives a crash and a resumed job skips it. One connection, serialised (the gateway's threads)."""

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, collection TEXT NOT NULL,
                                     state TEXT NOT NULL, doc TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS job_done (id TEXT NOT NULL, idx INTEGER NOT NULL, PRIMARY KEY (id, idx));
    CREATE TABLE IF NOT EXISTS job_errors (id TEXT NOT NULL, at REAL NOT NULL, message TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS claims (key TEXT PRIMARY KEY, pid INTEGER NOT NULL);
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(self.SCHEMA)
        self._lock = threading.Lock()

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def save(self, job: Job) -> None:
        doc = {k: v for k, v in asdict(job).items() if k not in ("done_chunks", "errors")}
        self._run(
            "INSERT INTO jobs (id, tenant, collection, state, doc) VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) "
            "DO UPDATE SET state = excluded.state, doc = excluded.doc",
            (job.id, job.tenant, job.collection, job.state, json.dumps(doc)),
        )
        for index in job.done_chunks:
            self._run("INSERT OR IGNORE INTO job_done (id, idx) VALUES (?, ?)", (job.id, index))

    def _load(self, job_id: str) -> Job | None:
        rows = self._run("SELECT doc FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            return None
        job = Job(**json.loads(rows[0][0]))
        job.done_chunks = [
            r[0] for r in self._run("SELECT idx FROM job_done WHERE id = ? ORDER BY idx", (job_id,))
        ]
        job.errors = [
            r[0] for r in self._run("SELECT message FROM job_errors WHERE id = ? ORDER BY at", (job_id,))
        ]
        return job

    def get(self, job_id: str, tenant: str | None = None) -> Job:
        job = self._load(job_id)
        if job is None or (tenant is not None and job.tenant != tenant):
            raise _not_found(job_id)
        return job

    def chunk_done(self, job_id: str, index: int) -> Job:
        self._run("INSERT OR IGNORE INTO job_done (id, idx) VALUES (?, ?)", (job_id, index))
        job = self.get(job_id)
        if settle(job):
            self.save(job)
        return job

    def add_error(self, job_id: str, message: str) -> None:
        self._run(
            "INSERT INTO job_errors (id, at, message) VALUES (?, ?, ?)", (job_id, time.time(), message[:500])
        )

    def running(self, tenant: str | None, collection: str | None = None) -> list[Job]:
        sql = "SELECT id FROM jobs WHERE state IN ('queued', 'running')"
        args: tuple[str, ...] = ()
        if tenant is not None:
            sql, args = sql + " AND tenant = ?", (tenant,)
        if collection is not None:
            sql, args = sql + " AND collection = ?", (*args, collection)
        return [j for j in (self._load(r[0]) for r in self._run(sql, args)) if j is not None]

    def claim(self, key: str) -> bool:
        """Take `key` for this process unless a live process holds it: several gateway workers resuming
        after a restart must not run the same job twice."""
        pid = os.getpid()
        with self._lock:
            row = self._db.execute("SELECT pid FROM claims WHERE key = ?", (key,)).fetchone()
            if row is not None and row[0] != pid and _alive(row[0]):
                return False
            self._db.execute("INSERT OR REPLACE INTO claims (key, pid) VALUES (?, ?)", (key, pid))
            return True

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisJobStore:
    """Shared by the gateway and Celery workers. Completion is a Redis set: idempotent under redelivery."""

    RUNNING_KEY = "ef:running-jobs"  # ids of queued and running jobs: what `running` reads (bounded)
    INDEXED_KEY = "ef:running-jobs:indexed"  # set once the index holds the jobs saved before it existed

    def __init__(self, url: str) -> None:
        import redis

        self.r = redis.Redis.from_url(url, socket_timeout=5)
        self._indexed = False  # checked at the first `running`: constructing never touches Redis

    def _index_running(self) -> None:
        """Once per Redis: the running jobs a release without the index saved are added to it (every job
        record is read this one time). Processes starting together may all do it: adding is idempotent,
        and `running` drops an id whose job has finished meanwhile."""
        if self._indexed or self.r.exists(self.INDEXED_KEY):
            self._indexed = True
            return
        tenants = list(self.r.scan_iter(match="ef:jobs:*"))  # one set of job ids a tenant
        ids = [_str(i) for i in (self.r.sunion(tenants) if tenants else ())]
        running = [j.id for j in self._load_many(ids) if j.running]
        if running:
            self.r.sadd(self.RUNNING_KEY, *running)
        self.r.set(self.INDEXED_KEY, "1")
        self._indexed = True

    def _load_many(self, job_ids: list[str]) -> list[Job]:
        """Every job in one pipeline round trip (not three per job)."""
        pipe = self.r.pipeline()
        for job_id in job_ids:
            pipe.get(f"ef:job:{job_id}")
            pipe.smembers(f"ef:job:{job_id}:done")
            pipe.lrange(f"ef:job:{job_id}:errors", 0, -1)
        raw = pipe.execute()
        jobs = []
        for i in range(0, len(raw), 3):
            record, done, errors = raw[i : i + 3]
            if record is None:
                continue
            job = Job(**json.loads(record))
            job.done_chunks = sorted(int(x) for x in done)
            job.errors = [_str(e) for e in errors]
            jobs.append(job)
        return jobs

    def save(self, job: Job) -> None:
        data = asdict(job)
        data["done_chunks"], data["errors"] = [], []
        pipe = self.r.pipeline()
        pipe.set(f"ef:job:{job.id}", json.dumps(data))
        pipe.sadd(f"ef:jobs:{job.tenant}", job.id)
        if job.running:
            pipe.sadd(self.RUNNING_KEY, job.id)
        else:
            pipe.srem(self.RUNNING_KEY, job.id)
        if job.done_chunks:
            pipe.sadd(f"ef:job:{job.id}:done", *job.done_chunks)
        pipe.execute()

    def get(self, job_id: str, tenant: str | None = None) -> Job:
        jobs = self._load_many([job_id])
        if not jobs or (tenant is not None and jobs[0].tenant != tenant):
            raise _not_found(job_id)
        return jobs[0]

    def chunk_done(self, job_id: str, index: int) -> Job:
        self.r.sadd(f"ef:job:{job_id}:done", index)
        job = self.get(job_id)
        if settle(job):
            self.save(job)
        return job

    def add_error(self, job_id: str, message: str) -> None:
        self.r.rpush(f"ef:job:{job_id}:errors", message[:500])

    def running(self, tenant: str | None, collection: str | None = None) -> list[Job]:
        """Queued and running jobs, read from the running index (never every job ever saved: records
        are kept); tenant None: every tenant's (a worker starting re-sends their lost chunks,
        services/worker/recovery.py). An id whose record is gone or finished leaves the index."""
        self._index_running()
        ids = [_str(i) for i in self.r.smembers(self.RUNNING_KEY)]
        jobs = self._load_many(ids)
        stale = set(ids) - {j.id for j in jobs if j.running}
        if stale:
            self.r.srem(self.RUNNING_KEY, *stale)
        return [
            j for j in jobs if j.running and tenant in (None, j.tenant) and collection in (None, j.collection)
        ]

    def claim(self, key: str) -> bool:
        return True  # the broker delivers each message to one worker

    def close(self) -> None:
        self.r.close()


def make_job_store(settings: Settings) -> SqliteJobStore | RedisJobStore:
    if settings.broker_url:
        return RedisJobStore(settings.broker_url)
    return SqliteJobStore(settings.data_dir / "jobs.sqlite")
