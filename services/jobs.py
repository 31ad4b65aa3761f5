"""Bulk indexing jobs: documents split into chunks stored in the blob store, processed idempotently.

A chunk is the unit of work and of retry: re-running it upserts the same point ids, and its completion
is recorded in a set, so a redelivered message (worker SIGKILLed mid-chunk, `acks_late`) neither loses nor
duplicates anything. The job record lives in Redis when a broker is configured (gateway and workers share
it) or in-process for the embedded default; the chunk code is the same either way.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from services import metrics
from services.config import Settings
from services.errors import EmbedfleetError, EncoderUnavailable, NotFound, Overloaded

if TYPE_CHECKING:
    from services.indexing import Document
    from services.runtime import Runtime

ACTIVE = {"queued", "running"}


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

    def list(self, tenant: str, collection: str | None = None) -> list[Job]: ...

    def close(self) -> None: ...


def _not_found(job_id: str) -> NotFound:
    return NotFound(f"job {job_id!r} not found", field="job_id")


class LocalJobStore:
    """Embedded default: jobs of this process, kept in memory (in-process jobs die with the process)."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def save(self, job: Job) -> None:
        with self._lock:
            self._jobs[job.id] = job

    def get(self, job_id: str, tenant: str | None = None) -> Job:
        job = self._jobs.get(job_id)
        if job is None or (tenant is not None and job.tenant != tenant):
            raise _not_found(job_id)
        return job

    def chunk_done(self, job_id: str, index: int) -> Job:
        with self._lock:
            job = self.get(job_id)
            if index not in job.done_chunks:
                job.done_chunks.append(index)
            _settle(job)
            return job

    def add_error(self, job_id: str, message: str) -> None:
        with self._lock:
            self.get(job_id).errors.append(message)

    def list(self, tenant: str, collection: str | None = None) -> list[Job]:
        return [j for j in self._jobs.values() if j.tenant == tenant and collection in (None, j.collection)]

    def close(self) -> None:
        return None


class RedisJobStore:
    """Shared by the gateway and Celery workers. Completion is a Redis set: idempotent under redelivery."""

    def __init__(self, url: str) -> None:
        import redis

        self.r = redis.Redis.from_url(url, socket_timeout=5)

    def _load(self, job_id: str) -> Job | None:
        raw = self.r.get(f"ef:job:{job_id}")
        if raw is None:
            return None
        job = Job(**json.loads(raw))
        job.done_chunks = sorted(int(x) for x in self.r.smembers(f"ef:job:{job_id}:done"))
        job.errors = [e.decode() for e in self.r.lrange(f"ef:job:{job_id}:errors", 0, -1)]
        return job

    def save(self, job: Job) -> None:
        data = asdict(job)
        data["done_chunks"], data["errors"] = [], []
        pipe = self.r.pipeline()
        pipe.set(f"ef:job:{job.id}", json.dumps(data))
        pipe.sadd(f"ef:jobs:{job.tenant}", job.id)
        if job.done_chunks:
            pipe.sadd(f"ef:job:{job.id}:done", *job.done_chunks)
        pipe.execute()

    def get(self, job_id: str, tenant: str | None = None) -> Job:
        job = self._load(job_id)
        if job is None or (tenant is not None and job.tenant != tenant):
            raise _not_found(job_id)
        return job

    def chunk_done(self, job_id: str, index: int) -> Job:
        self.r.sadd(f"ef:job:{job_id}:done", index)
        job = self.get(job_id)
        if _settle(job):
            self.save(job)
        return job

    def add_error(self, job_id: str, message: str) -> None:
        self.r.rpush(f"ef:job:{job_id}:errors", message[:500])

    def list(self, tenant: str, collection: str | None = None) -> list[Job]:
        jobs = [self._load(i.decode()) for i in self.r.smembers(f"ef:jobs:{tenant}")]
        return [j for j in jobs if j is not None and collection in (None, j.collection)]

    def close(self) -> None:
        self.r.close()


def _settle(job: Job) -> bool:
    """Mark a job finished when every chunk is done; True if its record changed."""
    if job.state in ACTIVE and len(set(job.done_chunks)) == len(job.chunks):
        job.state = "failed" if job.errors else "succeeded"
        job.finished_at = time.time()
        return True
    return False


def make_job_store(settings: Settings) -> JobStore:
    return RedisJobStore(settings.broker_url) if settings.broker_url else LocalJobStore()


# --- creating and running ------------------------------------------------------------------------
def create_job(
    rt: Runtime, tenant: str, collection: str, docs: list[Document], lane: str = "backfill"
) -> Job:
    """Write the chunks to the blob store and record the job (state `queued`)."""
    size = rt.settings.job_chunk_size
    chunks, sizes = [], []
    for i in range(0, len(docs), size):
        part = docs[i : i + size]
        chunks.append(rt.blobs.put(json.dumps([d.model_dump(exclude_none=True) for d in part]).encode()))
        sizes.append(len(part))
    job = Job(
        id=uuid.uuid4().hex, tenant=tenant, collection=collection, chunks=chunks, sizes=sizes, lane=lane
    )
    rt.jobs.save(job)
    return job


async def run_chunk(rt: Runtime, job_id: str, index: int) -> None:
    """Index one chunk (idempotent). Transient errors propagate for the caller to retry; permanent ones
    are recorded on the job and the chunk counts as processed."""
    from services.indexing import Document, index_documents

    job = await asyncio.to_thread(rt.jobs.get, job_id)
    if index in job.done_chunks or job.state == "cancelled":
        return
    if job.state == "queued":
        job.state, job.started_at = "running", time.time()
        await asyncio.to_thread(rt.jobs.save, job)
    raw = await asyncio.to_thread(rt.blobs.get, job.chunks[index])
    docs = [Document.model_validate(d) for d in json.loads(raw)]
    outcome = "indexed"
    try:
        await index_documents(rt, job.tenant, job.collection, docs, lane=job.lane)
    except (EncoderUnavailable, Overloaded):
        raise
    except EmbedfleetError as exc:
        outcome = "failed"
        await asyncio.to_thread(rt.jobs.add_error, job_id, f"chunk {index}: {exc.message}")
    metrics.JOB_DOCUMENTS.labels(job.collection, outcome).inc(len(docs))
    await asyncio.to_thread(rt.jobs.chunk_done, job_id, index)


async def run_inprocess(rt: Runtime, job_id: str, max_attempts: int = 5) -> None:
    """The embedded default: the same chunk code, in the gateway's own event loop."""
    job = rt.jobs.get(job_id)
    for index in range(len(job.chunks)):
        for attempt in range(max_attempts):
            try:
                await run_chunk(rt, job_id, index)
                break
            except (EncoderUnavailable, Overloaded) as exc:
                if attempt == max_attempts - 1:
                    rt.jobs.add_error(job_id, f"chunk {index}: {exc.message}")
                    rt.jobs.chunk_done(job_id, index)
                await asyncio.sleep(min(2**attempt, 30))
