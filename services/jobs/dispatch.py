"""One dispatcher for background work: indexing jobs and migration steps, in-process or on Celery.

Without a broker (the embedded default) work runs as tasks of the gateway's event loop; with one, it is
enqueued for `embedfleet worker` processes. Either way the unit is the same idempotent call
(`run_chunk`, `Migrations.step`) and the retry policy is one: `Transient` errors (encoder unavailable,
overloaded, the store restarting) are retried with capped exponential backoff; anything else is final.
In-process work is resumed when the gateway starts again: jobs the API accepted are in SQLite
(services.jobs.records) and migrations in their collection records, so a restart loses none of them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from services import metrics
from services.blobs import BlobStore
from services.config import Settings
from services.errors import Conflict, EmbedfleetError, Transient
from services.indexing import Document
from services.jobs.records import Job, JobStore
from services.migration.lifecycle import Migrations
from services.migration.state import State, migration_of
from services.store import VectorStore
from services.worker.celery_app import INDEX_CHUNK, MIGRATION_STEP, QUEUE, make_celery

log = logging.getLogger("embedfleet.jobs")
Index = Callable[..., Awaitable[int]]  # index_documents(tenant, name, docs, lane=...) with its parts bound
BACKOFF_MAX_S = 30.0
CHUNK_ATTEMPTS = 5


def backoff(attempt: int, error: Transient) -> float:
    """The one retry delay: exponential from 1 s, capped, never shorter than the error's Retry-After."""
    return max(min(2.0**attempt, BACKOFF_MAX_S), float(error.retry_after or 0))


def chunk_documents(raw: bytes) -> list[Document]:
    return [Document(**d) for d in json.loads(raw)]


def create_job(
    jobs: JobStore, blobs: BlobStore, chunk_size: int, tenant: str, collection: str, docs: list[Document]
) -> Job:
    """Write the chunks to the blob store and record the job (state `queued`); blocking (use a thread)."""
    chunks, sizes = [], []
    for i in range(0, len(docs), chunk_size):
        part = docs[i : i + chunk_size]
        chunks.append(blobs.put(json.dumps([d.to_dict() for d in part]).encode()))
        sizes.append(len(part))
    job = Job(id=uuid.uuid4().hex, tenant=tenant, collection=collection, chunks=chunks, sizes=sizes)
    jobs.save(job)
    return job


def unfinished_migrations(store: VectorStore) -> list[tuple[str, str]]:
    """(tenant, collection) of every migration that still has steps to run: active, or done with its
    source collection not dropped yet. Blocking (use a thread)."""
    out = []
    for info in store.all_collections():
        mig = migration_of(info)
        if mig is not None and (mig.active or (mig.state is State.done and not mig.source_dropped)):
            out.append((info.tenant, info.name))
    return out


class CeleryQueue:
    """Enqueues work for `embedfleet worker` processes; the Celery app is built once (not per enqueue)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = make_celery(settings)

    def send(self, task: str, args: tuple[Any, ...]) -> None:
        self.app.send_task(task, args=list(args), queue=QUEUE)

    def send_job(self, job: Job) -> None:
        for index in range(len(job.chunks)):
            self.send(INDEX_CHUNK, (job.id, index))

    def send_step(self, tenant: str, name: str, delay: float = 0.0) -> None:
        """Countdowns are capped below the visibility timeout so a delayed message is not redelivered while
        it waits (the step itself re-checks the clock)."""
        cap = self.settings.job_visibility_timeout_s / 2
        self.app.send_task(MIGRATION_STEP, args=[tenant, name], queue=QUEUE, countdown=min(delay, cap))


class Dispatcher:
    def __init__(
        self,
        settings: Settings,
        jobs: JobStore,
        blobs: BlobStore,
        store: VectorStore,
        index: Index,
        migrations: Migrations,
    ) -> None:
        self.settings = settings
        self.jobs = jobs
        self.blobs = blobs
        self.store = store
        self.index = index
        self.migrations = migrations
        self._tasks: set[asyncio.Task[None]] = set()
        self.queue = CeleryQueue(settings) if settings.broker_url else None

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- indexing jobs ------------------------------------------------------------------------------
    async def submit_job(self, job: Job) -> None:
        if self.queue is None:
            self._spawn(self._run_job(job.id))
        else:
            await asyncio.to_thread(self.queue.send_job, job)

    async def run_chunk(self, job_id: str, index: int) -> None:
        """Index one chunk (idempotent). Transient errors propagate for the caller to retry; final ones are
        recorded on the job and the chunk counts as processed."""
        job = await asyncio.to_thread(self.jobs.get, job_id)
        if index in job.done_chunks or job.state == "cancelled":
            return
        if job.state == "queued":
            job.state, job.started_at = "running", time.time()
            await asyncio.to_thread(self.jobs.save, job)
        docs = chunk_documents(await asyncio.to_thread(self.blobs.get, job.chunks[index]))
        outcome = "indexed"
        try:
            await self.index(job.tenant, job.collection, docs, lane=job.lane)
        except Transient:
            raise
        except EmbedfleetError as exc:
            outcome = "failed"
            await asyncio.to_thread(self.jobs.add_error, job_id, f"chunk {index}: {exc.message}")
        metrics.JOB_DOCUMENTS.labels(job.collection, outcome).inc(len(docs))
        await asyncio.to_thread(self.jobs.chunk_done, job_id, index)

    async def _run_job(self, job_id: str) -> None:
        job = await asyncio.to_thread(self.jobs.get, job_id)
        for index in range(len(job.chunks)):
            for attempt in range(CHUNK_ATTEMPTS):
                try:
                    await self.run_chunk(job_id, index)
                    break
                except Transient as exc:
                    if attempt == CHUNK_ATTEMPTS - 1:
                        await asyncio.to_thread(self.jobs.add_error, job_id, f"chunk {index}: {exc.message}")
                        await asyncio.to_thread(self.jobs.chunk_done, job_id, index)
                        break
                    await asyncio.sleep(backoff(attempt, exc))

    # --- migrations ---------------------------------------------------------------------------------
    async def submit_migration(self, tenant: str, name: str, delay: float = 0.0) -> None:
        if self.queue is None:
            self._spawn(self._run_migration(tenant, name))
        else:
            await asyncio.to_thread(self.queue.send_step, tenant, name, delay)

    async def _run_migration(self, tenant: str, name: str) -> None:
        attempt = 0
        while True:
            try:
                delay = await self.migrations.step(tenant, name)
                attempt = 0
            except Transient as exc:
                delay = backoff(attempt, exc)
                attempt += 1
            except Conflict as exc:  # cancelled, rolled back or replaced meanwhile: nothing left to do
                log.info("migration %s/%s steps end: %s", tenant, name, exc.message)
                return
            if delay is None:
                return
            await asyncio.sleep(delay)

    # --- start-up recovery --------------------------------------------------------------------------
    async def resume(self) -> int:
        """In-process work the last run left unfinished: accepted jobs and migrations (their records say
        where they stopped). With a broker, workers own recovery: redelivery, and for a migration step
        the broker lost, services.worker.recovery."""
        if self.queue is not None:
            return 0
        resumed = 0
        for job in await asyncio.to_thread(self.jobs.running, None):
            if await asyncio.to_thread(self.jobs.claim, f"job:{job.id}"):
                self._spawn(self._run_job(job.id))
                resumed += 1
        for tenant, name in await asyncio.to_thread(unfinished_migrations, self.store):
            if await asyncio.to_thread(self.jobs.claim, f"migration:{tenant}:{name}"):
                self._spawn(self._run_migration(tenant, name))
                resumed += 1
        if resumed:
            log.info("resumed %d unfinished jobs and migrations", resumed)
        return resumed

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
