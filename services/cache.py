"""Embedding cache: in-process LRU (embedded default) or Redis (shared by gateway replicas).

Keys hash (model, version, rendered input, dimensions, normalize), so a template or model change never
serves a stale vector. A Redis outage degrades to "no cache", never to an error: failures are counted,
and Redis is skipped for a short cool-down so a dead server does not add a timeout to every request.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections import OrderedDict
from typing import Protocol

import numpy as np

from services import metrics
from services.config import Settings


def cache_key(model_ref: str, rendered: str, dimensions: int | None, normalize: bool) -> str:
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{model_ref}\x00{dimensions}\x00{int(normalize)}\x00".encode())
    h.update(rendered.encode("utf-8", "surrogatepass"))
    return "ef:emb:" + h.hexdigest()


class EmbeddingCache(Protocol):
    name: str

    async def get_many(self, keys: list[str]) -> list[np.ndarray | None]: ...

    async def set_many(self, items: dict[str, np.ndarray]) -> None: ...

    async def close(self) -> None: ...


class NoCache:
    name = "none"

    async def get_many(self, keys: list[str]) -> list[np.ndarray | None]:
        return [None] * len(keys)

    async def set_many(self, items: dict[str, np.ndarray]) -> None:
        return None

    async def close(self) -> None:
        return None


class LRUCache:
    name = "lru"

    def __init__(self, max_entries: int, ttl_s: float) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._data: OrderedDict[str, tuple[float, np.ndarray]] = OrderedDict()

    async def get_many(self, keys: list[str]) -> list[np.ndarray | None]:
        now = time.monotonic()
        out: list[np.ndarray | None] = []
        for k in keys:
            hit = self._data.get(k)
            if hit is not None and hit[0] > now:
                self._data.move_to_end(k)
                out.append(hit[1])
            else:
                if hit is not None:
                    del self._data[k]
                out.append(None)
        return out

    async def set_many(self, items: dict[str, np.ndarray]) -> None:
        expires = time.monotonic() + self.ttl_s
        for k, v in items.items():
            self._data[k] = (expires, v)
            self._data.move_to_end(k)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    async def close(self) -> None:
        self._data.clear()


class RedisCache:
    name = "redis"

    def __init__(self, url: str, ttl_s: int, cooldown_s: float = 5.0) -> None:
        import redis.asyncio as aioredis

        self.ttl_s = ttl_s
        self.cooldown_s = cooldown_s
        self._down_until = 0.0
        self._redis = aioredis.from_url(url, socket_timeout=0.25, socket_connect_timeout=0.25)

    def _available(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self) -> None:
        metrics.CACHE_ERRORS.labels(self.name).inc()
        self._down_until = time.monotonic() + self.cooldown_s

    async def get_many(self, keys: list[str]) -> list[np.ndarray | None]:
        if not keys or not self._available():
            return [None] * len(keys)
        try:
            raw = await self._redis.mget(keys)
        except Exception:
            self._failed()
            return [None] * len(keys)
        return [np.frombuffer(r, dtype="<f4") if isinstance(r, bytes) and r else None for r in raw]

    async def set_many(self, items: dict[str, np.ndarray]) -> None:
        if not items or not self._available():
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for k, v in items.items():
                    pipe.set(k, np.ascontiguousarray(v, dtype="<f4").tobytes(), ex=self.ttl_s)
                await pipe.execute()
        except Exception:
            self._failed()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._redis.aclose()


def make_cache(settings: Settings) -> EmbeddingCache:
    if settings.cache_backend == "redis":
        return RedisCache(settings.redis_url, settings.cache_ttl_s)
    if settings.cache_backend == "lru":
        return LRUCache(settings.cache_max_entries, settings.cache_ttl_s)
    return NoCache()


async def lookup(cache: EmbeddingCache, keys: list[str]) -> list[np.ndarray | None]:
    """Get with hit/miss accounting, the only way the embedder reads the cache."""
    found = await cache.get_many(keys)
    hits = sum(v is not None for v in found)
    metrics.CACHE.labels(cache.name, "hit").inc(hits)
    metrics.CACHE.labels(cache.name, "miss").inc(len(keys) - hits)
    return found


async def split_cached(cache: EmbeddingCache, keys: list[str], dim: int) -> tuple[np.ndarray, list[int]]:
    """A [len(keys), dim] result with the cache's hits filled in, and the indices still to compute.

    An empty key marks a row that is never cached (it is looked up nowhere and always computed)."""
    asked = [i for i, k in enumerate(keys) if k]
    found = await lookup(cache, [keys[i] for i in asked]) if asked else []
    out = np.empty((len(keys), dim), dtype=np.float32)
    hit: set[int] = set()
    for i, v in zip(asked, found, strict=True):
        if v is not None:
            out[i] = v
            hit.add(i)
    return out, [i for i in range(len(keys)) if i not in hit]


async def fill_fresh(
    cache: EmbeddingCache, out: np.ndarray, keys: list[str], missing: list[int], fresh: np.ndarray
) -> None:
    """Put the computed rows into `out` at `missing` and into the cache under their (non-empty) keys."""
    out[missing] = fresh
    await cache.set_many({keys[i]: fresh[j] for j, i in enumerate(missing) if keys[i]})
