"""Celery app for indexing (and later backfill) jobs: Redis broker, at-least-once delivery.

`acks_late` + `task_reject_on_worker_lost` + prefetch 1: a chunk whose worker dies (even SIGKILL) is
redelivered, and chunks are idempotent (deterministic point ids, a completion set), so redelivery never
duplicates. The visibility timeout bounds how long a lost chunk waits before redelivery.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from celery import Celery
from celery.signals import worker_process_init, worker_process_shutdown

from services.config import Settings, get_settings
from services.errors import EncoderUnavailable, Overloaded

if TYPE_CHECKING:
    from services.jobs import Job
    from services.runtime import Runtime

log = logging.getLogger("embedfleet.worker")
INDEX_CHUNK = "embedfleet.index_chunk"
MIGRATION_STEP = "embedfleet.migration_step"
QUEUE = "embedfleet"


def make_celery(settings: Settings) -> Celery:
    if not settings.broker_url:
        raise RuntimeError("broker_url is unset: jobs run in-process in the gateway")
    app = Celery("embedfleet", broker=settings.broker_url)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=QUEUE,
        broker_transport_options={"visibility_timeout": settings.job_visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
    )
    retry = {
        "bind": True,
        "autoretry_for": (EncoderUnavailable, Overloaded),
        "retry_backoff": True,
        "retry_backoff_max": 60,
    }
    app.task(name=INDEX_CHUNK, max_retries=20, **retry)(index_chunk)
    app.task(name=MIGRATION_STEP, max_retries=None, **retry)(migration_step)
    return app


def enqueue_migration_step(settings: Settings, tenant: str, name: str, countdown: float = 0.0) -> None:
    """Schedule the next step; countdowns are capped below the visibility timeout so a delayed message
    is not redelivered while it waits (the step itself re-checks the clock)."""
    cap = settings.job_visibility_timeout_s / 2
    make_celery(settings).send_task(
        MIGRATION_STEP, args=[tenant, name], queue=QUEUE, countdown=min(countdown, cap)
    )


def enqueue_job(settings: Settings, job: Job) -> None:
    app = make_celery(settings)
    for index in range(len(job.chunks)):
        app.send_task(INDEX_CHUNK, args=[job.id, index], queue=QUEUE)


# --- worker side: one runtime and one event loop per worker process -----------------------------
_state: dict[str, object] = {}


def _runtime() -> tuple[Runtime, asyncio.AbstractEventLoop]:
    if "runtime" not in _state:
        from services.runtime import Runtime

        _state["loop"] = asyncio.new_event_loop()
        _state["runtime"] = Runtime.build(get_settings())
    return _state["runtime"], _state["loop"]  # type: ignore[return-value]


@worker_process_init.connect
def _reset_after_fork(**_: object) -> None:
    """A forked pool child must not reuse its parent's sockets or event loop."""
    _state.clear()


@worker_process_shutdown.connect
def _close(**_: object) -> None:
    if "runtime" in _state:
        rt, loop = _runtime()
        loop.run_until_complete(rt.close())


def index_chunk(task: object, job_id: str, index: int) -> None:
    from services.jobs import run_chunk

    rt, loop = _runtime()
    loop.run_until_complete(run_chunk(rt, job_id, index))


def migration_step(task: object, tenant: str, name: str) -> None:
    from services.migration.lifecycle import step

    rt, loop = _runtime()
    delay = loop.run_until_complete(step(rt, tenant, name))
    if delay is not None:
        enqueue_migration_step(rt.settings, tenant, name, delay)


def main(settings: Settings, concurrency: int = 1) -> None:
    """`embedfleet worker`: a Celery worker process (prefork pool) on the embedfleet queue."""
    from prometheus_client import start_http_server

    start_http_server(settings.worker_metrics_port, addr=settings.triton_bind_address)
    app = make_celery(settings)
    app.worker_main(
        [
            "worker",
            "--loglevel",
            settings.log_level.upper(),
            "--concurrency",
            str(concurrency),
            "--queues",
            QUEUE,
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )
