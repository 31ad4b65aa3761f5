"""Triton encoder whose tensors travel through system shared memory when gateway and Triton share a host.

Only the request metadata crosses gRPC; inputs are written into, and outputs read from, a region both
processes map (compose with a shared /dev/shm and IPC namespace, or the same pod). Each in-flight call
holds one region from a pool, so concurrent calls never share one; the pool is sized from the registry
(largest batch x sequence x dims of the served models), and a batch larger than a region simply goes over
plain gRPC. Registration is repeated after the client is rebuilt (a restarted Triton forgets regions).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc.aio as grpcclient
import tritonclient.utils.shared_memory as shm

from services import metrics
from services.encoders.triton import TritonEncoder
from services.errors import EmbedfleetError, EncoderUnavailable
from services.registry import Kind, ModelSpec

OUTPUT = "embeddings"


@dataclass(frozen=True)
class RegionSize:
    """Bytes for inputs (at offset 0) and outputs (after them) of the largest batch any served model takes."""

    inputs: int
    outputs: int

    @classmethod
    def for_models(cls, specs: Sequence[ModelSpec]) -> RegionSize:
        inputs, outputs = 0, 0
        for s in specs:
            rows = s.batching.max_batch_size
            if s.kind is Kind.image_encoder:
                size = s.image.size if s.image else 224
                inputs = max(inputs, rows * 3 * size * size * 4)
            elif s.kind is Kind.text_encoder:
                inputs = max(inputs, 2 * rows * s.max_seq_length * 8)
            outputs = max(outputs, rows * s.dimension * 4)
        return cls(inputs, outputs)

    @property
    def total(self) -> int:
        return self.inputs + self.outputs


@dataclass
class _Region:
    name: str
    handle: shm.SharedMemoryRegion


class ShmEncoder(TritonEncoder):
    def __init__(
        self,
        url: str,
        specs: Sequence[ModelSpec],
        pool_size: int = 4,
        timeout_s: float = 30.0,
        retry_after_s: int = 1,
    ) -> None:
        super().__init__(url, timeout_s, retry_after_s)
        self.size = RegionSize.for_models(specs)
        self.dims = {s.triton_name: s.dimension for s in specs if s.kind is not Kind.dual_tower}
        prefix = f"embedfleet-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        names = [f"{prefix}-{i}" for i in range(pool_size)]
        self._regions = [
            _Region(n, shm.create_shared_memory_region(n, f"/{n}", self.size.total)) for n in names
        ]
        self._free: asyncio.Queue[_Region] = asyncio.Queue()
        for region in self._regions:
            self._free.put_nowait(region)
        self._registered_with: grpcclient.InferenceServerClient | None = None
        self._register_lock = asyncio.Lock()
        self.calls = {"shm": 0, "grpc": 0}

    async def _ensure_registered(self) -> grpcclient.InferenceServerClient:
        """Register every region with the current client's server, once per client (idempotent)."""
        client = self.client
        if self._registered_with is client:
            return client
        async with self._register_lock:
            if self._registered_with is not self.client:
                client = self.client
                for r in self._regions:
                    with contextlib.suppress(Exception):  # not registered yet: nothing to drop
                        await client.unregister_system_shared_memory(r.name, client_timeout=self.timeout_s)
                    await client.register_system_shared_memory(
                        r.name, f"/{r.name}", self.size.total, client_timeout=self.timeout_s
                    )
                self._registered_with = client
        return self.client

    def _fits(self, model: str, rows: int, arrays: Sequence[np.ndarray]) -> bool:
        dim = self.dims.get(model)
        return (
            dim is not None
            and sum(a.nbytes for a in arrays) <= self.size.inputs
            and rows * dim * 4 <= self.size.outputs
        )

    async def _infer_shm(self, model: str, named: Sequence[tuple[str, np.ndarray, str]]) -> np.ndarray:
        rows = named[0][1].shape[0]
        out_bytes = rows * self.dims[model] * 4
        region = await self._free.get()
        started = time.perf_counter()
        try:
            client = await self._ensure_registered()
            offset = 0
            inputs = []
            for name, array, dtype in named:
                array = np.ascontiguousarray(array)
                shm.set_shared_memory_region(region.handle, [array], offset=offset)
                tensor = grpcclient.InferInput(name, list(array.shape), dtype)
                tensor.set_shared_memory(region.name, array.nbytes, offset=offset)
                inputs.append(tensor)
                offset += array.nbytes
            output = grpcclient.InferRequestedOutput(OUTPUT)
            output.set_shared_memory(region.name, out_bytes, offset=self.size.inputs)
            await client.infer(model, inputs, outputs=[output], client_timeout=self.timeout_s)
            out = shm.get_contents_as_numpy(
                region.handle, np.float32, [rows, self.dims[model]], offset=self.size.inputs
            ).copy()  # the region goes back to the pool: never hand out a view of it
        except Exception as exc:
            metrics.TRITON_LATENCY.labels(model, "error").observe(time.perf_counter() - started)
            if isinstance(exc, EmbedfleetError):
                raise
            err = self._classify(model, exc)
            if isinstance(err, EncoderUnavailable):
                await self._reset()
            raise err from exc
        finally:
            self._free.put_nowait(region)
        metrics.TRITON_LATENCY.labels(model, "ok").observe(time.perf_counter() - started)
        self.calls["shm"] += 1
        return out

    async def embed_tokens(self, model: str, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        ids = input_ids.astype(np.int64, copy=False)
        mask = attention_mask.astype(np.int64, copy=False)
        if not self._fits(model, ids.shape[0], (ids, mask)):
            self.calls["grpc"] += 1
            return await super().embed_tokens(model, ids, mask)
        return await self._infer_shm(model, [("input_ids", ids, "INT64"), ("attention_mask", mask, "INT64")])

    async def embed_pixels(self, model: str, pixel_values: np.ndarray) -> np.ndarray:
        pixels = pixel_values.astype(np.float32, copy=False)
        if not self._fits(model, pixels.shape[0], (pixels,)):
            self.calls["grpc"] += 1
            return await super().embed_pixels(model, pixels)
        return await self._infer_shm(model, [("pixel_values", pixels, "FP32")])

    async def _reset(self) -> None:
        self._registered_with = None
        await super()._reset()

    async def close(self) -> None:
        """Unregister from Triton (best effort: it may be gone), then unmap and unlink every region."""
        client = self._registered_with
        if client is not None:
            for r in self._regions:
                with contextlib.suppress(Exception):
                    await client.unregister_system_shared_memory(r.name, client_timeout=2.0)
        await super().close()
        for r in self._regions:
            with contextlib.suppress(Exception):
                shm.destroy_shared_memory_region(r.handle)
        self._regions = []
