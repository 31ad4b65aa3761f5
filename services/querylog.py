"""Opt-in sample of a collection's recent query texts, kept only to fit migration compensators.

Real queries are the best fitting pairs for a query-side compensator (compatibility.md §1: QDC fits on
queries), so a collection may opt in (`query_log: true`). What is kept is bounded three ways: at most
`query_log_size` texts per collection (random slots in a fixed slot space, so the newest queries are the
likeliest kept, with no shared counter between replicas), none older than `query_log_ttl_s`, each cut
to `query_log_max_chars`. Texts are scoped by (tenant, collection), dropped with the collection or when
it opts out, and no API returns them: the migration record only counts them.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

from services.config import Settings
from services.store import CollectionInfo, VectorStore

log = logging.getLogger("embedfleet.querylog")


class QueryLog:
    def __init__(self, settings: Settings, store: VectorStore) -> None:
        self.settings = settings
        self.store = store
        self._pending: set[asyncio.Task[None]] = set()

    def remember(self, info: CollectionInfo, text: str) -> None:
        """Log one query text in the background (never on the request's latency path, never its error)."""
        s = self.settings
        if not info.query_log or s.query_log_size <= 0 or not text.strip():
            return
        if s.query_log_rate < 1.0 and random.random() >= s.query_log_rate:
            return
        slot = random.randrange(s.query_log_size)
        task = asyncio.create_task(self._write(info, slot, text[: s.query_log_max_chars]))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _write(self, info: CollectionInfo, slot: int, text: str) -> None:
        try:
            await asyncio.to_thread(self.store.log_query, info.tenant, info.name, slot, text, time.time())
        except Exception:  # a lost sample only weakens a future fit; the search already answered
            log.warning("query log write failed for %s", info.name, exc_info=True)

    async def recall(self, tenant: str, name: str, limit: int) -> list[str]:
        """The kept texts within the retention window, deduplicated (case-insensitively), at most `limit`."""
        since = time.time() - self.settings.query_log_ttl_s
        texts = await asyncio.to_thread(
            self.store.logged_queries, tenant, name, since, self.settings.query_log_size
        )
        seen: set[str] = set()
        out = []
        for t in texts:
            if t.lower() not in seen:
                seen.add(t.lower())
                out.append(t)
        return out[:limit]

    async def drain(self) -> None:
        """Wait for writes in flight (tests, shutdown)."""
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
