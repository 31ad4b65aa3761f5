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
    return app
