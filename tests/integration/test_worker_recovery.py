"""services/worker/recovery.py against a real redis-server and Celery's own producer and consumer: which
tasks the broker holds (queued, delayed, delivered and unacked), and which get sent again."""

from __future__ import annotations

import pytest

from services.config import Settings
from services.jobs.dispatch import CeleryQueue
from services.worker.celery_app import INDEX_CHUNK, MIGRATION_STEP, QUEUE
from services.worker.recovery import held, resend_lost

pytestmark = pytest.mark.integration


@pytest.fixture
def queue(redis_server):  # type: ignore[no-untyped-def]
    """A Celery producer on a database of its own (the other tests' workers use database 0)."""
    url = redis_server.url.rsplit("/", 1)[0] + "/7"
    q = CeleryQueue(Settings(broker_url=url, job_visibility_timeout_s=30))
    with q.app.connection_for_write() as conn:
        client = conn.default_channel.client
        client.flushdb()
        yield q, conn, client
        client.flushdb()


def test_held_sees_queued_delayed_and_unacked_tasks(queue) -> None:  # type: ignore[no-untyped-def]
    q, conn, client = queue
    q.send_step("t", "queued")
    q.send_step("t", "delayed", delay=5.0)
    q.send(INDEX_CHUNK, ("job", 3))
    client.lpush(QUEUE, b"not a celery message", b'{"headers": {}}')  # foreign entries are skipped
    everything = {
        (MIGRATION_STEP, ("t", "queued")),
        (MIGRATION_STEP, ("t", "delayed")),
        (INDEX_CHUNK, ("job", 3)),
    }
    assert held(client, QUEUE) == everything
    # delivered to a consumer and not acked (a running task): held in kombu's unacked hash
    message = conn.default_channel.basic_get(QUEUE, no_ack=False)
    assert message is not None and message.headers["argsrepr"] == "['t', 'queued']"  # first in, first out
    assert client.llen(QUEUE) == 4 and client.hlen("unacked") == 1
    assert held(client, QUEUE) == everything
    message.ack()
    assert held(client, QUEUE) == everything - {(MIGRATION_STEP, ("t", "queued"))}


def test_only_what_the_broker_lost_is_sent_again_once(queue) -> None:  # type: ignore[no-untyped-def]
    q, _, client = queue

    q.send_step("t", "alive")
    q.send(INDEX_CHUNK, ("job", 0))
    wanted = [
        (MIGRATION_STEP, ("t", "alive")),
        (MIGRATION_STEP, ("t", "lost")),
        (INDEX_CHUNK, ("job", 0)),
        (INDEX_CHUNK, ("job", 1)),
    ]
    sent = resend_lost(client, QUEUE, wanted, q.send, hold_s=30)
    assert sent == [(MIGRATION_STEP, ("t", "lost")), (INDEX_CHUNK, ("job", 1))]
    assert held(client, QUEUE) == set(wanted)
    # lost once more within the hold: a second process starting now sends nothing
    client.delete(QUEUE)
    assert resend_lost(client, QUEUE, wanted[1:2], q.send, hold_s=30) == []
    for key in client.scan_iter(match="embedfleet:recovery:*"):
        client.delete(key)  # the hold expired
    assert resend_lost(client, QUEUE, wanted[1:2], q.send, hold_s=30) == wanted[1:2]
