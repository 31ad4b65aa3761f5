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


def _work_of(raw: Any) -> Work | None:
    """(task, args) of a kombu Redis message (Celery's task protocol 2), None for anything else."""
    if not isinstance(raw, dict) or "task" not in raw.get("headers", {}):
        return None
    body = raw.get("body", "")
    if raw.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    return str(raw["headers"]["task"]), tuple(json.loads(body)[0])


def held(client: Any, queue: str) -> set[Work]:
    """Every task the broker holds for `queue`: queued (any of its priority lists) or delivered and not
    yet acked (running, or waiting for its countdown)."""
    lists = [queue, *(k.decode() for k in client.scan_iter(match=f"{queue}{PRIORITY_SEP}*"))]
    raws = [json.loads(m) for name in lists for m in client.lrange(name, 0, -1)]
    raws += [json.loads(v)[0] for v in client.hvals(UNACKED_KEY)]
    return {w for w in map(_work_of, raws) if w is not None}


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
