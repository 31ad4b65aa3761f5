"""The Celery app's configuration and names, shared by whoever enqueues (the dispatcher) and the worker.

Redis broker, at-least-once delivery: `acks_late` + `task_reject_on_worker_lost` + prefetch 1 redeliver a
chunk whose worker died (even SIGKILL), and chunks are idempotent (deterministic point ids, a completion
set), so redelivery never duplicates. The visibility timeout bounds how long a lost chunk waits. The tasks
themselves are registered by services.worker.tasks, in worker processes only.
"""

from __future__ import annotations

from celery import Celery

from services.config import Settings

INDEX_CHUNK = "embedfleet.index_chunk"
MIGRATION_STEP = "embedfleet.migration_step"
QUEUE = "embedfleet"


def transport_options(visibility_timeout_s: int) -> dict[str, int]:
    """Redis transport options that make the visibility timeout the bound on a lost chunk's wait.

    Kombu sweeps unacked messages back to the queue every `unacked_restore_interval` x
    `unacked_restore_throttle` seconds (10 x 10 by default), so a chunk whose worker was SIGKILLed waited
    up to the timeout plus 100 s (measured: 100 s idle after a restart with a 10 s timeout). One scan of
    the unacked index every tenth of the timeout (1-10 s) is cheap and keeps the wait near the timeout.
    """
    return {
        "visibility_timeout": visibility_timeout_s,
        "unacked_restore_interval": max(1, min(10, visibility_timeout_s // 10)),
        "unacked_restore_throttle": 1,
    }


def make_celery(settings: Settings) -> Celery:
    if not settings.broker_url:
        raise RuntimeError("broker_url is unset: jobs run in-process in the gateway")
    app = Celery("embedfleet", broker=settings.broker_url)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=QUEUE,
        broker_transport_options=transport_options(settings.job_visibility_timeout_s),
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
    )
    return app
