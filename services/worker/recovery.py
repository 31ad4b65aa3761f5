"""Re-send the Celery messages a Redis broker lost when a worker died.

`acks_late` keeps a running task's message in kombu's `unacked` hash, so a SIGKILLed worker's chunk or
migration step is redelivered after the visibility timeout. One window is not covered: kombu's Redis
transport takes a message off the queue with BRPOP and records it as unacked only when the consumer has
read the reply, so a consumer killed in between loses it (kombu issue 305, celery issue 4354; here 1 of 5
runs of the SIGKILL migration test stalled that way). A migration is a chain (each step enqueues the
next), so it would wait forever; an indexing job would stay `running` with a chunk never indexed.
In-process work has `Dispatcher.resume()`; this is its Celery counterpart, run when a worker's pool
process starts (a killed worker is restarted): every unfinished migration whose step, and every chunk of
a running job, that is neither queued nor unacked is sent again. A Redis key set with NX for one
visibility timeout lets one of several processes starting together send it. A message another live
consumer popped in the same microseconds would be sent twice: chunks and steps are idempotent (a
completion set, deterministic point ids), and two step chains end together when the migration does.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger("embedfleet.worker")
UNACKED_KEY = "unacked"  # kombu's Redis transport default (`unacked_key`); the fleet does not change it
PRIORITY_SEP = "\x06\x16"  # kombu's separator for a queue's priority lists (`<queue>\x06\x16<priority>`)
Work = tuple[str, tuple[Any, ...]]  # (task name, its positional args)


def _work_of(raw: bytes, unacked: bool) -> Work | None:
    """(task, args) of a stored kombu Redis message (Celery's task protocol 2; an unacked entry wraps it
    with its exchange and routing key), None for anything else: a foreign message must not stop the scan."""
    try:
        message = json.loads(raw)[0] if unacked else json.loads(raw)
        task = message["headers"]["task"]
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        return str(task), tuple(json.loads(body)[0])
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def held(client: Any, queue: str) -> set[Work]:
    """Every task the broker holds for `queue`: queued (any of its priority lists) or delivered and not
    yet acked (running, or waiting for its countdown)."""
    lists = [queue, *(k.decode() for k in client.scan_iter(match=f"{queue}{PRIORITY_SEP}*"))]
    works = [_work_of(m, unacked=False) for name in lists for m in client.lrange(name, 0, -1)]
    works += [_work_of(v, unacked=True) for v in client.hvals(UNACKED_KEY)]
    return {w for w in works if w is not None}


def resend_lost(
    client: Any,
    queue: str,
    wanted: Iterable[Work],
    send: Callable[[str, tuple[Any, ...]], None],
    hold_s: int,
) -> list[Work]:
    """Send each wanted task the broker holds none of; returns those sent."""
    present = held(client, queue)
    sent = []
    for task, args in wanted:
        if (task, args) in present:
            continue
        key = "embedfleet:recovery:" + json.dumps([task, list(args)])
        if not client.set(key, 1, nx=True, ex=hold_s):
            continue  # another process starting now sends it
        send(task, args)
        sent.append((task, args))
        log.warning("%s%s had no message in the broker (lost with a worker): sent it again", task, list(args))
    return sent
