"""The fleet's parts, assembled once per process (gateway lifespan, Celery worker start-up).

One constructor for both, so a worker embeds and writes exactly as the gateway does. Nothing in the core
takes a `Runtime`: functions and services get the parts they use; only the composition roots (the
gateway's lifespan and dependencies, the worker, the CLI) read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from services.blobs import BlobStore
from services.cache import make_cache
from services.calibration import Calibrations
from services.config import Settings
from services.embedder import Embedder
from services.encoders.triton import TritonEncoder
from services.indexing import index_documents
from services.jobs import JobStore, make_job_store
from services.jobs.dispatch import Dispatcher
from services.migration.lifecycle import Migrations
from services.querylog import QueryLog
from services.registry import Registry, load_registry
from services.search import Compensators, Searcher
from services.store import VectorStore, open_store


@dataclass
class Runtime:
    settings: Settings
    registry: Registry
    embedder: Embedder
    store: VectorStore
    blobs: BlobStore
    jobs: JobStore
    querylog: QueryLog
    searcher: Searcher
    calibrations: Calibrations
    migrations: Migrations
    dispatcher: Dispatcher

    @classmethod
    def build(cls, settings: Settings, *, store: VectorStore | None = None) -> Runtime:
        if settings.triton_url is None:
            raise RuntimeError("triton_url is unset: `embedfleet serve` starts a local Triton and sets it")
        registry = load_registry(settings.registry_path)
        encoder: TritonEncoder
        if settings.encoder_transport == "shm":
            from services.encoders.shm import ShmEncoder

            specs = [registry.get(n) for n in registry.triton_models(settings.models)]
            encoder = ShmEncoder(
                settings.triton_url,
                specs,
                settings.shm_pool_size,
                settings.triton_timeout_s,
                settings.retry_after_s,
            )
        else:
            encoder = TritonEncoder(settings.triton_url, settings.triton_timeout_s, settings.retry_after_s)
        embedder = Embedder(settings, registry, encoder, make_cache(settings))
        store = store or open_store(settings)
        blobs = BlobStore.from_settings(settings)
        jobs = make_job_store(settings)
        querylog = QueryLog(settings, store)
        migrations = Migrations(settings, embedder, store, blobs, querylog)
        index = partial(index_documents, embedder, store, blobs)
        return cls(
            settings=settings,
            registry=registry,
            embedder=embedder,
            store=store,
            blobs=blobs,
            jobs=jobs,
            querylog=querylog,
            searcher=Searcher(embedder, store, querylog, Compensators(blobs), settings.search_max_candidates),
            calibrations=Calibrations(embedder, settings.data_dir / "calibration"),
            migrations=migrations,
            dispatcher=Dispatcher(settings, jobs, blobs, store, index, migrations),
        )

    async def close(self) -> None:
        await self.dispatcher.close()
        await self.querylog.drain()
        await self.embedder.close()
        self.jobs.close()
        self.store.close()
