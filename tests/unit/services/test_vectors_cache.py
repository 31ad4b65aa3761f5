"""Vector arithmetic and the embedding cache (LRU; Redis outage degrades to no cache)."""

from __future__ import annotations

import socket

import numpy as np

from services import metrics
from services.cache import LRUCache, RedisCache, cache_key, lookup
from services.vectors import finish, from_base64, fuse, l2_normalize, to_base64


def test_matryoshka_truncates_then_renormalizes() -> None:
    v = np.array([[3.0, 4.0, 12.0]], dtype=np.float32)
    out = finish(v, 2, normalize=True)
    assert np.allclose(out, [[0.6, 0.8]])
    assert np.allclose(finish(v, None, normalize=False), v)


def test_base64_is_little_endian_float32() -> None:
    v = np.array([1.0, -2.5, 0.125], dtype=np.float32)
    s = to_base64(v)
    assert np.array_equal(from_base64(s), v)
    assert s == "AACAPwAAIMAAAAA+"


def test_fuse_weighted_mean_of_normalized() -> None:
    a, b = np.array([2.0, 0.0]), np.array([0.0, 5.0])
    assert np.allclose(fuse([a, b], [1, 1]), l2_normalize(np.array([1.0, 1.0])))
    assert np.allclose(fuse([a, b], [1, 0]), [1.0, 0.0])


def test_cache_key_separates_everything_that_changes_a_vector() -> None:
    base = cache_key("m:1", "hello", None, True)
    assert base != cache_key("m:2", "hello", None, True)
    assert base != cache_key("m:1", "hello ", None, True)
    assert base != cache_key("m:1", "hello", 128, True)
    assert base != cache_key("m:1", "hello", None, False)
    assert base == cache_key("m:1", "hello", None, True)


async def test_lru_evicts_and_expires() -> None:
    c = LRUCache(max_entries=2, ttl_s=60)
    await c.set_many({"a": np.ones(2), "b": np.zeros(2)})
    await c.get_many(["a"])  # a is now most recent
    await c.set_many({"c": np.ones(2)})
    assert [x is not None for x in await c.get_many(["a", "b", "c"])] == [True, False, True]
    expired = LRUCache(max_entries=10, ttl_s=-1)
    await expired.set_many({"a": np.ones(2)})
    assert await expired.get_many(["a"]) == [None]


async def test_redis_down_is_a_miss_not_an_error() -> None:
    with socket.socket() as s:  # a loopback port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = RedisCache(f"redis://127.0.0.1:{port}/0", ttl_s=60)
    before = metrics.CACHE_ERRORS.labels("redis")._value.get()
    assert await lookup(c, ["k1", "k2"]) == [None, None]
    await c.set_many({"k1": np.ones(3, dtype=np.float32)})
    assert metrics.CACHE_ERRORS.labels("redis")._value.get() >= before + 1
    await c.close()
