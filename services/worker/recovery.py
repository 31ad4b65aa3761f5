"""Re-send the migration steps a Redis broker lost when a worker died.

A migration on Celery is a chain: each step enqueues the next before it returns, and `acks_late` keeps
the running step's message in kombu's `unacked` hash, so a SIGKILLed worker's step is redelivered after
the visibility timeout. One window is not covered: kombu's Redis transport takes a message off the queue
with BRPOP and records it as unacked only when the consumer has read the reply, so a consumer killed in
between loses it (kombu issue 305, celery issue 4354; here 1 of 5 runs of the SIGKILL migration test
stalled that way), and the migration would then wait forever. In-process work has
`Dispatcher.resume()`; this is its Celery counterpart, run when a worker's pool process starts (a killed
worker is restarted): every unfinished migration whose step is neither queued nor unacked gets a new
one. A Redis key set with NX for one visibility timeout lets one of several processes starting together
send it. A step another live consumer has popped in the same microseconds would be sent twice; steps are
idempotent, and the two chains end together when the migration does.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

from services.worker.celery_app import MIGRATION_STEP

log = logging.getLogger("embedfleet.worker")
UNACKED_KEY = "unacked"  # kombu's Redis transport default (`unacked_key`); the fleet does not change it
PRIORITY_SEP = "\x06\x16"  # kombu's separator for a queue's priority lists (`<queue>\x06\x16<priority>`)
Migration = tuple[str, str]  # (tenant, collection)


def _step_of(raw: Any) -> Migration | None:
    """(tenant, name) of a kombu Redis message dict if it is a migration step, else None."""
    if not isinstance(raw, dict) or raw.get("headers", {}).get("task") != MIGRATION_STEP:
        return None
    body = raw.get("body", "")
    if raw.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    args = json.loads(body)[0]
    return str(args[0]), str(args[1])


def held_steps(client: Any, queue: str) -> set[Migration]:
    """Migrations with a step message in the broker: queued (any priority list of `queue`) or delivered
    and not yet acked (a running step, or one waiting for its countdown)."""
    held: set[Migration] = set()
    lists = [queue, *(k.decode() for k in client.scan_iter(match=f"{queue}{PRIORITY_SEP}*"))]
    raws = [json.loads(m) for name in lists for m in client.lrange(name, 0, -1)]
    raws += [json.loads(v)[0] for v in client.hvals(UNACKED_KEY)]
    for raw in raws:
        step = _step_of(raw)
        if step is not None:
            held.add(step)
    return held


def resend_lost_steps(
    client: Any,
    queue: str,
    unfinished: Iterable[Migration],
    send: Callable[[str, str], None],
    hold_s: int,
) -> list[Migration]:
    """Send a step for each unfinished migration the broker holds none for; returns those sent."""
    held = held_steps(client, queue)
    sent = []
    for tenant, name in unfinished:
        if (tenant, name) in held:
            continue
        if not client.set(f"embedfleet:step-recovery:{tenant}:{name}", 1, nx=True, ex=hold_s):
            continue  # another process starting now sends it
        send(tenant, name)
        sent.append((tenant, name))
        log.warning("migration %s/%s had no step in the broker (lost with a worker): sent one", tenant, name)
    return sent
