"""One settings class for the whole fleet.

Every knob is an `EMBEDFLEET_*` environment variable (or a `.env` entry); docker-compose and the Helm
chart set exactly these fields, which a test checks. Nothing reads the environment at import time:
callers build a `Settings` with `get_settings()` and pass it down explicitly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EMBEDFLEET_", env_file=".env", extra="ignore")

    # --- gateway -------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = Field(1, ge=1, description="uvicorn worker processes of the gateway")
    gc_freeze: bool = Field(
        True,
        description="move the heap built at startup out of the collector's reach (gc.freeze): unfrozen, "
        "each full collection walked it, a 140-160 ms pause of the event loop every few seconds under load "
        "(docs/operations.md)",
    )
    log_level: str = "info"
    data_dir: Path = Field(PACKAGE_ROOT / "var", description="local state: qdrant, blobs, jobs, logs")

    # --- models and Triton ---------------------------------------------------------------------
    registry_path: Path = Field(PACKAGE_ROOT / "services" / "registry" / "models.yaml")
    model_repository: Path = Field(PACKAGE_ROOT / "model_repository")
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["all-minilm-l6-v2", "lit-shapes", "vlm-shapes"],
        description="models the gateway serves",
    )
    triton_url: str | None = Field(
        None, description="host:port of an external Triton gRPC endpoint; unset = start a local one"
    )
    triton_bind_address: str = Field("127.0.0.1", description="address a local tritonserver listens on")
    triton_http_port: int = 0
    triton_grpc_port: int = 0
    triton_metrics_port: int = 0
    triton_instance_count: int = Field(1, ge=1, description="instances per model on the CPU target")
    triton_ort_threads: int = Field(
        2,
        ge=1,
        description="ONNX Runtime threads per instance: a batch's runs shared among that many single-thread "
        "workers, a batch of one row on that many intra-op threads (trt_build/run_plan.py)",
    )
    triton_torch_threads: int = Field(
        1,
        ge=1,
        description="torch intra-op threads per CPU instance of a torch engine (vlm): vlm-shapes runs no "
        "faster on 2 than on 1 and burns twice the CPU (OpenMP threads spin on the gateway's cores); raise "
        "it for a full-size backbone on a many-core node",
    )
    triton_startup_timeout_s: float = 120.0
    triton_timeout_s: float = Field(30.0, description="per-call deadline for a Triton inference")
    build_target: Literal["cpu", "gpu", "torch-cuda"] = "cpu"
    encoder_transport: Literal["grpc", "shm"] = Field(
        "grpc", description="shm: Triton system shared memory, when gateway and Triton share a host"
    )
    shm_pool_size: int = Field(4, ge=1, description="shared-memory regions per gateway process")
    torch_dtype: Literal["float16", "bfloat16"] = "float16"
    torch_cuda_graphs: bool = True
    torch_compile: str = Field("none", description="torch.compile mode of the torch-cuda engine; none = off")

    # --- batching and admission ----------------------------------------------------------------
    max_batch_tokens: int = Field(8192, ge=1, description="padded tokens per batch sent to Triton")
    max_batch_size: int = Field(64, ge=1)
    max_wait_ms: float = Field(
        0.0,
        ge=0,
        description="how long a partial batch waits for more rows while the encoder is free; 0 = send now "
        "(rows queue while a batch runs, which is what forms batches: on CPU 0 beat 2 ms unloaded and "
        "under 64 clients, docs/operations.md)",
    )
    max_queue_inputs: int = Field(4096, ge=1, description="queued inputs per model before 429")
    inflight_batches: int = Field(
        1, ge=1, description="batches in flight to Triton per model (1 on CPU: the next batch keeps filling)"
    )
    retry_after_s: int = Field(1, ge=1)

    # --- payload limits ------------------------------------------------------------------------
    max_request_bytes: int = 4 * 1024 * 1024
    max_inputs_per_request: int = 2048
    max_chars_per_input: int = 100_000

    # --- auth ----------------------------------------------------------------------------------
    api_keys: dict[str, str | dict[str, str | float]] = Field(
        default_factory=dict,
        description="api key -> tenant id, or -> {tenant, rate, burst} (JSON in the environment)",
    )
    api_keys_file: Path | None = Field(None, description="YAML/JSON file of {key: tenant|{tenant, rate...}}")
    rate_limit_rps: float = Field(50.0, gt=0, description="default per-key requests/s (token bucket)")
    rate_limit_burst: int = Field(100, ge=1)

    # --- cache ---------------------------------------------------------------------------------
    cache_backend: Literal["none", "lru", "redis"] = "lru"
    cache_max_entries: int = 100_000
    cache_ttl_s: int = 7 * 24 * 3600
    redis_url: str = "redis://127.0.0.1:6379/0"

    # --- storage and jobs ----------------------------------------------------------------------
    qdrant_url: str | None = Field(
        None, description="Qdrant server URL; unset = the embedded Qdrant Edge store under data_dir/edge"
    )
    qdrant_api_key: str | None = None
    search_max_candidates: int = Field(
        1000, ge=10, le=2000, description="bound on the pool one hybrid or diversity (MMR) stage considers"
    )
    store_flush_ms: int = Field(
        1000,
        ge=0,
        description="embedded store: flush to disk at most this long after a write (0 = before answering it)",
    )
    store_index_threshold: int = Field(
        20_000, ge=1, description="embedded store: points outside any index before an HNSW build starts"
    )
    store_hnsw_ef: int = Field(
        256, ge=1, description="HNSW search breadth (recall vs latency; 256 keeps recall@10 >= 0.99 at 100k)"
    )
    store_hnsw_ef_construct: int = Field(
        200, ge=4, description="HNSW build breadth of new collections (graph quality vs build time)"
    )
    store_build_threads: int = Field(1, ge=1, description="threads of the embedded store's index builds")
    store_socket: Path | None = Field(
        None, description="set by `embedfleet serve`: the embedded store's host process socket"
    )
    store_key: str | None = Field(None, description="set by `embedfleet serve`: the store host's key (hex)")
    blob_dir: Path | None = Field(None, description="content-addressed blob store; default data_dir/blobs")
    broker_url: str | None = Field(None, description="Celery broker; unset = jobs run in-process")
    async_threshold: int = Field(256, ge=1, description="documents per request above which indexing is a job")
    job_chunk_size: int = Field(64, ge=1)
    migration_sample_size: int = Field(2000, ge=20, description="documents sampled to fit a compensator")
    backfill_share: float = Field(
        0.25,
        gt=0,
        le=1,
        description="most of an encoder's time (5 s window) a backfill takes beside online work",
    )
    migration_grace_s: float = Field(3600.0, ge=0, description="v1 kept after cutover for rollback")
    query_log_size: int = Field(
        5000, ge=0, description="query texts kept per opted-in collection (0 = never log, even if opted in)"
    )
    query_log_ttl_s: float = Field(30 * 24 * 3600.0, gt=0, description="logged query texts older are dropped")
    query_log_rate: float = Field(
        1.0, ge=0, le=1, description="fraction of an opted-in collection's queries logged"
    )
    query_log_max_chars: int = Field(1000, ge=1, description="a logged query text is cut to this length")
    worker_metrics_port: int = Field(9100, description="where `embedfleet worker` serves /metrics")
    job_visibility_timeout_s: int = Field(300, ge=10, description="Redis broker redelivery of unacked chunks")

    # --- media ---------------------------------------------------------------------------------
    max_image_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    allowed_image_formats: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["JPEG", "PNG", "WEBP", "GIF", "BMP"]
    )
    max_video_bytes: int = 64 * 1024 * 1024
    max_video_seconds: float = 600.0
    max_video_pixels: int = 1920 * 1080
    video_decode_timeout_s: float = 20.0
    fetch_enabled: bool = False
    fetch_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    fetch_timeout_s: float = 5.0
    media_workers: int = Field(2, ge=1, description="threads for decode/resize off the event loop")
    media_inline_pixels: int = Field(
        16_384,
        ge=0,
        description="a request whose images add up to at most this many pixels (by their headers, no video) "
        "is decoded on the event loop: for small images the hand-off to the media pool costs about what "
        "their decode does (~0.5 ms vs ~0.9 ms, 64 px on 2 vCPU); 0 = always on the pool",
    )

    @field_validator("models", "allowed_image_formats", "fetch_allowed_hosts", mode="before")
    @classmethod
    def _split_csv(cls, v: object) -> object:
        """Accept `a,b,c` from the environment as well as JSON lists."""
        if isinstance(v, str):
            if v.lstrip().startswith("["):
                return json.loads(v)
            return [s.strip() for s in v.split(",") if s.strip()]
        return v

    @property
    def local_triton(self) -> bool:
        return self.triton_url is None

    @property
    def blobs_path(self) -> Path:
        return self.blob_dir or self.data_dir / "blobs"


def get_settings(**overrides: object) -> Settings:
    """Build settings from the environment, with explicit overrides (used by the CLI and tests)."""
    return Settings(**overrides)  # type: ignore[arg-type]
