"""`embedfleet worker`: Celery tasks as thin wrappers over the same core calls in-process work makes
(services.jobs.dispatch), with the same retry policy (`Transient` errors, capped exponential backoff)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from celery import Celery
from celery.signals import worker_process_init, worker_process_shutdown

from services.config import Settings
from services.errors import Transient
from services.jobs.dispatch import BACKOFF_MAX_S, CHUNK_ATTEMPTS, unfinished_migrations
from services.worker.celery_app import INDEX_CHUNK, MIGRATION_STEP, QUEUE, make_celery
from services.worker.recovery import resend_lost

if TYPE_CHECKING:
    from services.runtime import Runtime

log = logging.getLogger("embedfleet.worker")
_state: dict[str, Any] = {}  # one runtime and one event loop per worker process


def make_worker_app(settings: Settings) -> Celery:
    app = make_celery(settings)
    retry = {
        "bind": True,
        "autoretry_for": (Transient,),
        "retry_backoff": True,
        "retry_backoff_max": BACKOFF_MAX_S,
    }
    app.task(name=INDEX_CHUNK, max_retries=4 * CHUNK_ATTEMPTS, **retry)(index_chunk)
    app.task(name=MIGRATION_STEP, max_retries=None, **retry)(migration_step)
    _state["settings"] = settings  # the settings the worker was started with, for its runtime
    return app


def _runtime() -> tuple[Runtime, asyncio.AbstractEventLoop]:
    if "runtime" not in _state:
        from services.runtime import Runtime

        _state["loop"] = asyncio.new_event_loop()
        _state["runtime"] = Runtime.build(_state["settings"])
    return _state["runtime"], _state["loop"]


@worker_process_init.connect
def _reset_after_fork(**_: object) -> None:
    """A forked pool child must not reuse its parent's sockets or event loop (it keeps the settings);
    then it re-sends any chunk or migration step the broker lost with a dead worker."""
    _state.pop("runtime", None)
    _state.pop("loop", None)
    try:
        recover_lost_work()
    except Exception:  # a worker must start even when the broker or the store hiccups now
        log.exception("recovery of lost messages failed; unfinished work was not checked")


def recover_lost_work() -> list[tuple[str, tuple[Any, ...]]]:
    """services.worker.recovery over this process's store (it owns an embedded one), jobs and broker:
    each unfinished migration wants a step, each running job its chunks not done yet."""
    rt, _ = _runtime()
    queue = rt.dispatcher.queue
    if queue is None:
        return []
    wanted: list[tuple[str, tuple[Any, ...]]] = [(MIGRATION_STEP, m) for m in unfinished_migrations(rt.store)]
    for job in rt.jobs.running(None):
        done = set(job.done_chunks)
        wanted += [(INDEX_CHUNK, (job.id, i)) for i in range(len(job.chunks)) if i not in done]

    with queue.app.connection_for_write() as conn:
        if conn.transport.driver_type != "redis":
            return []  # kombu's other transports redeliver unacked messages themselves
        client = conn.default_channel.client
        return resend_lost(client, QUEUE, wanted, queue.send, rt.settings.job_visibility_timeout_s)


@worker_process_shutdown.connect
def _close(**_: object) -> None:
    if "runtime" in _state:
        rt, loop = _runtime()
        loop.run_until_complete(rt.close())


def index_chunk(task: object, job_id: str, index: int) -> None:
    rt, loop = _runtime()
    loop.run_until_complete(rt.dispatcher.run_chunk(job_id, index))


def migration_step(task: object, tenant: str, name: str) -> None:
    rt, loop = _runtime()
    delay = loop.run_until_complete(rt.migrations.step(tenant, name))
    if delay is not None:
        loop.run_until_complete(rt.dispatcher.submit_migration(tenant, name, delay))


def main(settings: Settings, concurrency: int = 1) -> None:
    """A Celery worker process (prefork pool) on the embedfleet queue, with /metrics."""
    from prometheus_client import start_http_server

    start_http_server(settings.worker_metrics_port, addr=settings.triton_bind_address)
    make_worker_app(settings).worker_main(
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
