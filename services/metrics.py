"""Prometheus metrics, defined once with one prefix (`embedfleet_`) and a small label set.

Dashboards and alert rules (helm/, deploy/) name only these series; a test runs every panel's query
against a real Prometheus scraping a real gateway, so renaming one here must be followed there.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TOKEN_BUCKETS = (16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)

REQUESTS = Counter(
    "embedfleet_requests_total", "HTTP requests by route, model and status", ["route", "model", "status"]
)
REQUEST_LATENCY = Histogram(
    "embedfleet_request_duration_seconds",
    "HTTP request latency by route and model",
    ["route", "model"],
    buckets=LATENCY_BUCKETS,
)
REJECTED = Counter(
    "embedfleet_rejected_requests_total",
    "Requests refused before any work, by reason (queue_full, rate_limited, auth, too_large, invalid, "
    "unavailable)",
    ["reason"],
)
QUEUE_DEPTH = Gauge("embedfleet_queue_depth", "Inputs waiting in the batcher", ["model", "lane"])
QUEUE_TIME = Histogram(
    "embedfleet_queue_wait_seconds",
    "Time an input waits before its batch is sent",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "embedfleet_batch_size", "Inputs per batch sent to Triton", ["model"], buckets=SIZE_BUCKETS
)
BATCH_TOKENS = Histogram(
    "embedfleet_batch_tokens", "Padded tokens per batch sent to Triton", ["model"], buckets=TOKEN_BUCKETS
)
TOKENS = Counter("embedfleet_tokens_total", "Tokens embedded (unpadded)", ["model"])
INPUTS = Counter("embedfleet_inputs_total", "Inputs embedded, by modality", ["model", "modality"])
TRITON_LATENCY = Histogram(
    "embedfleet_triton_request_duration_seconds",
    "Latency of one Triton inference call",
    ["model", "outcome"],
    buckets=LATENCY_BUCKETS,
)
CACHE = Counter("embedfleet_cache_requests_total", "Embedding cache lookups", ["backend", "result"])
CACHE_ERRORS = Counter(
    "embedfleet_cache_errors_total", "Cache backend failures (served without cache)", ["backend"]
)
ENCODER_UP = Gauge("embedfleet_encoder_up", "1 when the model answered its last readiness check", ["model"])
JOB_DOCUMENTS = Counter(
    "embedfleet_job_documents_total", "Documents processed by indexing jobs", ["collection", "outcome"]
)
MIGRATION_PROGRESS = Gauge(
    "embedfleet_migration_progress_ratio", "Backfill progress of a migration", ["collection"]
)
MIGRATION_DOCUMENTS = Counter(
    "embedfleet_migration_documents_total", "Documents re-embedded by migration backfills", ["collection"]
)
SEARCHES = Counter(
    "embedfleet_search_requests_total",
    "Searches by read path: raw, compensated (v2 query mapped into v1), merged, v1_fallback",
    ["collection", "path"],
)
