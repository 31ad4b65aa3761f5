"""services/worker/recovery.py against a real redis-server and Celery's own producer and consumer: which
migration steps the broker holds (queued, delayed, delivered and unacked), and which get re-sent."""

from __future__ import annotations

import pytest

from services.config import Settings
from services.jobs.dispatch import CeleryQueue
from services.worker.celery_app import INDEX_CHUNK, QUEUE
from services.worker.recovery import held_steps, resend_lost_steps

pytestmark = pytest.mark.integration


@pytest.fixture
def queue(redis_server):  # type: ignore[no-untyped-def]
    q = CeleryQueue(Settings(broker_url=redis_server.url, job_visibility_timeout_s=30))
    with q.app.connection_for_write() as conn:
        client = conn.default_channel.client
        client.flushdb()
        yield q, conn, client
        client.flushdb()


def test_held_steps_sees_queued_delayed_and_unacked_steps_only(queue) -> None:  # type: ignore[no-untyped-def]
    q, conn, client = queue
    q.send_step("t", "queued")
    q.send_step("t", "delayed", delay=5.0)
    q.app.send_task(INDEX_CHUNK, args=["job", 0], queue=QUEUE)  # not a step
    assert held_steps(client, QUEUE) == {("t", "queued"), ("t", "delayed")}
    # delivered to a consumer and not acked (a running step): held in kombu's unacked hash
    message = conn.default_channel.basic_get(QUEUE, no_ack=False)
    assert message is not None and message.headers["argsrepr"] == "['t', 'queued']"  # first in, first out
    assert client.llen(QUEUE) == 2 and client.hlen("unacked") == 1
    assert held_steps(client, QUEUE) == {("t", "queued"), ("t", "delayed")}
    message.ack()
    assert held_steps(client, QUEUE) == {("t", "delayed")}


def test_only_steps_the_broker_lost_are_resent_once(queue) -> None:  # type: ignore[no-untyped-def]
    q, _, client = queue
    q.send_step("t", "alive")
    sent = resend_lost_steps(client, QUEUE, [("t", "alive"), ("t", "lost")], q.send_step, hold_s=30)
    assert sent == [("t", "lost")]
    assert held_steps(client, QUEUE) == {("t", "alive"), ("t", "lost")}
    # its step consumed again (lost once more) within the hold: a second process starting now sends none
    client.delete(QUEUE)
    assert resend_lost_steps(client, QUEUE, [("t", "lost")], q.send_step, hold_s=30) == []
    client.delete("embedfleet:step-recovery:t:lost")  # the hold expired
    assert resend_lost_steps(client, QUEUE, [("t", "lost")], q.send_step, hold_s=30) == [("t", "lost")]
