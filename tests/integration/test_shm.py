"""System shared memory against the real CPU Triton: same vectors as gRPC, fallback for batches larger
than a region, no region shared by concurrent calls, clean unregister/unlink; timing printed side by side."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from services.encoders.shm import ShmEncoder
from services.encoders.triton import TritonEncoder
from services.registry import Batching, load_registry
from services.triton_server import LocalTriton

pytestmark = pytest.mark.integration
MODEL = "all-minilm-l6-v2"
SPEC = load_registry().get(MODEL)


def _batch(rows: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random ids, right-padded rows of random lengths (the last row full width)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 29000, size=(rows, width), dtype=np.int64)
    lengths = rng.integers(1, width + 1, size=rows)
    lengths[-1] = width
    mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
    ids[:, 0] = 101
    return ids * mask, mask


@pytest.mark.parametrize(("rows", "width"), [(1, 4), (3, 17), (16, 64), (64, 128), (32, 256)])
async def test_shm_equals_grpc(triton: LocalTriton, rows: int, width: int) -> None:
    grpc = TritonEncoder(triton.ports.grpc_url)
    enc = ShmEncoder(triton.ports.grpc_url, [SPEC], pool_size=2)
    try:
        ids, mask = _batch(rows, width, seed=rows)
        want = await grpc.embed_tokens(MODEL, ids, mask)
        got = await enc.embed_tokens(MODEL, ids, mask)
        assert enc.calls == {"shm": 1, "grpc": 0}
        assert got.shape == (rows, SPEC.dimension) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    finally:
        await enc.close()
        await grpc.close()


async def test_concurrent_calls_do_not_share_a_region(triton: LocalTriton) -> None:
    grpc = TritonEncoder(triton.ports.grpc_url)
    enc = ShmEncoder(triton.ports.grpc_url, [SPEC], pool_size=2)
    try:
        batches = [_batch(4 + i, 8 + 3 * i, seed=100 + i) for i in range(8)]
        got = await asyncio.gather(*(enc.embed_tokens(MODEL, *b) for b in batches))
        want = [await grpc.embed_tokens(MODEL, *b) for b in batches]
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5)
        assert enc.calls["shm"] == 8
    finally:
        await enc.close()
        await grpc.close()


async def test_larger_than_region_falls_back_to_grpc(triton: LocalTriton) -> None:
    small = SPEC.model_copy(update={"batching": Batching(max_batch_size=4, max_batch_tokens=8192)})
    enc = ShmEncoder(triton.ports.grpc_url, [small], pool_size=1)
    try:
        ids, mask = _batch(16, 32, seed=7)
        big = await enc.embed_tokens(MODEL, ids, mask)
        part = await enc.embed_tokens(MODEL, ids[:4], mask[:4])
        assert enc.calls == {"shm": 1, "grpc": 1}
        np.testing.assert_allclose(big[:4], part, atol=1e-5, rtol=1e-5)
    finally:
        await enc.close()


async def test_close_unregisters_and_unlinks(triton: LocalTriton) -> None:
    enc = ShmEncoder(triton.ports.grpc_url, [SPEC], pool_size=2)
    names = [r.name for r in enc._regions]
    await enc.embed_tokens(MODEL, *_batch(2, 8, seed=1))
    status = await enc.client.get_system_shared_memory_status(as_json=True)
    assert set(names) <= set(status.get("regions", {}))
    assert all(Path("/dev/shm", n).exists() for n in names)
    await enc.close()
    probe = TritonEncoder(triton.ports.grpc_url)
    status = await probe.client.get_system_shared_memory_status(as_json=True)
    await probe.close()
    assert not set(names) & set(status.get("regions", {}))
    assert not any(Path("/dev/shm", n).exists() for n in names)


async def test_re_registers_after_client_reset(triton: LocalTriton) -> None:
    enc = ShmEncoder(triton.ports.grpc_url, [SPEC], pool_size=1)
    try:
        first = await enc.embed_tokens(MODEL, *_batch(2, 8, seed=2))
        await enc._reset()  # what an unavailable Triton triggers
        await enc.client.unregister_system_shared_memory()  # a restarted server forgot every region
        again = await enc.embed_tokens(MODEL, *_batch(2, 8, seed=2))
        np.testing.assert_array_equal(first, again)
    finally:
        await enc.close()


async def test_timing_side_by_side(triton: LocalTriton) -> None:
    """Printed, not asserted: on 2 shared CPU cores the model dominates; the transport is the difference."""
    grpc = TritonEncoder(triton.ports.grpc_url)
    enc = ShmEncoder(triton.ports.grpc_url, [SPEC], pool_size=4)
    try:
        for rows, width, n in ((1, 8, 40), (16, 64, 5)):
            batch = _batch(rows, width, seed=rows)
            timings = {}
            for _ in range(2):  # interleaved, best of two rounds: this machine's speed drifts
                for name, e in (("grpc", grpc), ("shm", enc)):
                    await e.embed_tokens(MODEL, *batch)
                    t0 = time.perf_counter()
                    for _ in range(n):
                        await e.embed_tokens(MODEL, *batch)
                    ms = (time.perf_counter() - t0) / n * 1000
                    timings[name] = min(timings.get(name, ms), ms)
            print(
                f"\n[shm vs grpc] batch {rows}x{width}: grpc {timings['grpc']:.2f} ms,"
                f" shm {timings['shm']:.2f} ms per call (mean of {n}, best of 2 interleaved rounds)"
            )
    finally:
        await enc.close()
        await grpc.close()
