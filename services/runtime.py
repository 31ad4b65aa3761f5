"""The core's assembled parts, built once per process (gateway lifespan, Celery worker start-up).

One constructor for both, so a worker embeds and writes exactly as the gateway does.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.blobs import BlobStore
from services.cache import make_cache
from services.config import Settings
from services.embedder import Embedder
from services.encoders.triton import TritonEncoder
from services.jobs import JobStore, make_job_store
from services.registry import Registry, load_registry
from services.store import VectorStore, open_store


@dataclass
class Runtime:
    settings: Settings
    registry: Registry
    embedder: Embedder
    store: VectorStore
    blobs: BlobStore
    jobs: JobStore

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
        return cls(
            settings=settings,
            registry=registry,
            embedder=Embedder(settings, registry, encoder, make_cache(settings)),
            store=store or open_store(settings),
            blobs=BlobStore.from_settings(settings),
            jobs=make_job_store(settings),
        )

    async def close(self) -> None:
        await self.embedder.close()
        self.jobs.close()
        self.store.close()
