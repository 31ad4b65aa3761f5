"""Triton python-backend model, `torch-cuda` engine: an HF encoder in fp16/bf16 replayed as CUDA graphs.

Copied into the repository as `<model>/<version>/model.py` with `buckets.py` and `pooling.py` beside it
(trt_build/model_files.py: the stub imports the model as `<version>.model`, so the siblings are relative
imports here and in the source tree alike; nothing else from the project is imported). Same I/O signature
as the cpu and TensorRT engines.

Why this shape: measured on an H100, batch-1 eager bert-base is 7.8 ms against 0.72 ms replayed from a
CUDA graph, and a naive python-backend model reached 12-20% of the raw engine. So `initialize` captures
one graph per (batch, sequence) bucket, and `execute` merges all requests' rows, sorts them by length,
pads each chunk to its bucket, makes ONE host-to-device copy for the whole call (gRPC delivers inputs in
host memory; that copy cannot be avoided), replays, pools on the GPU and hands the outputs back through
DLPack without a host copy (Triton copies them out for the gRPC response).

`device: cpu` runs the same code eagerly in fp32 without graphs: that is how the logic is tested on
machines without a GPU.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.dlpack import to_dlpack

from . import buckets as bk
from . import pooling

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # outside Triton: the Engine alone serves tests and the bench
    pb_utils = None

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
IMAGE_KEY = 0  # graphs of image towers are keyed (batch, IMAGE_KEY): they have no sequence axis


class ImageTower(torch.nn.Module):
    """Projected image embedding where the architecture has one (CLIP ...WithProjection), else the pooler."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return pooling.own_embedding(self.encoder(pixel_values=pixel_values))


@dataclass(frozen=True)
class EngineOptions:
    pooling: str = "mean"
    dtype: str = "float16"
    attn_implementation: str = "sdpa"
    cuda_graphs: bool = True
    compile_mode: str = "none"  # torch.compile mode; "none" = off (measure before keeping it)
    padding_side: str = "right"
    image_size: int = 0  # > 0: an image tower taking [n, 3, size, size] pixel_values

    @classmethod
    def from_params(cls, params: dict[str, str]) -> EngineOptions:
        return cls(
            pooling=params.get("pooling", "mean"),
            dtype=params.get("dtype", "float16"),
            attn_implementation=params.get("attn_implementation", "sdpa"),
            cuda_graphs=params.get("cuda_graphs", "true").lower() == "true",
            compile_mode=params.get("compile", "none"),
            padding_side=params.get("padding_side", "right"),
            image_size=int(params.get("image_size", "0")),
        )


class Engine:
    """Model, pooling, graphs and the row plan; usable without Triton (the bench measures it raw)."""

    def __init__(
        self, module: torch.nn.Module, buckets: bk.BucketSet, opts: EngineOptions, device: str
    ) -> None:
        self.device = torch.device(device)
        self.on_cuda = self.device.type == "cuda"
        if self.on_cuda:
            torch.cuda.set_device(self.device)  # graph capture uses the current device
        self.opts = opts
        self.dtype = DTYPES[opts.dtype] if self.on_cuda else torch.float32
        self.buckets = buckets
        module = module.to(self.device, self.dtype).eval()
        self.module: Callable[..., torch.Tensor] = module
        if opts.compile_mode != "none":
            self.module = torch.compile(module, mode=opts.compile_mode, dynamic=False)
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, list[torch.Tensor], torch.Tensor]] = {}
        self._host = torch.empty(0, dtype=torch.int64)
        self._dev = torch.empty(0, dtype=torch.int64, device=self.device)
        self._copied: torch.cuda.Event | None = None  # the last host-to-device copy out of _host

    @classmethod
    def load(cls, model_dir: str, buckets: bk.BucketSet, opts: EngineOptions, device: str) -> Engine:
        import transformers

        cls_ = transformers.AutoModel  # text: the bare encoder (last_hidden_state), whatever was saved
        if opts.image_size:  # image: the saved architecture, which keeps e.g. CLIP's visual projection
            config = transformers.AutoConfig.from_pretrained(model_dir)
            names = [a for a in (config.architectures or []) if hasattr(transformers, a)]
            cls_ = getattr(transformers, names[0]) if names else cls_
        encoder = cls_.from_pretrained(model_dir, attn_implementation=opts.attn_implementation)
        module = ImageTower(encoder) if opts.image_size else pooling.PooledEncoder(encoder, opts.pooling)
        return cls(module, buckets, opts, device)

    @property
    def is_image(self) -> bool:
        return self.opts.image_size > 0

    def shapes(self) -> list[tuple[int, int]]:
        if self.is_image:
            return [(b, IMAGE_KEY) for b in reversed(self.buckets.batch)]
        return self.buckets.pairs()

    def _static_inputs(self, b: int, s: int) -> list[torch.Tensor]:
        if self.is_image:
            size = self.opts.image_size
            return [torch.zeros((b, 3, size, size), dtype=self.dtype, device=self.device)]
        return [torch.ones((b, s), dtype=torch.int64, device=self.device) for _ in range(2)]

    @torch.inference_mode()
    def capture(self, warmup: int = 2) -> None:
        """One graph per bucket, largest first, all in one memory pool: a replay's output is copied out
        before the next replay, so sharing the pool is safe and memory stays that of the largest graph."""
        if not (self.on_cuda and self.opts.cuda_graphs):
            return
        mempool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream(self.device)
        for b, s in self.shapes():
            inputs = self._static_inputs(b, s)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    self.module(*inputs)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=mempool):
                out = self.module(*inputs)
            self.graphs[(b, s)] = (graph, inputs, out)
        torch.cuda.synchronize(self.device)

    def _run(self, key: tuple[int, int], *inputs: torch.Tensor) -> torch.Tensor:
        entry = self.graphs.get(key)
        if entry is None:
            return self.module(*inputs)
        graph, static, out = entry
        for dst, src in zip(static, inputs, strict=True):
            dst.copy_(src, non_blocking=True)
        graph.replay()
        return out

    def _staging(self, n: int) -> tuple[np.ndarray, torch.Tensor]:
        """Host (pinned on CUDA) and device buffers of at least n int64, grown on demand and reused.

        The host buffer is rewritten only once the previous asynchronous copy out of it has finished: the
        CPU may run ahead of the GPU by several calls."""
        if self._copied is not None:
            self._copied.synchronize()
        if self._host.numel() < n:
            self._host = torch.empty(n, dtype=torch.int64, pin_memory=self.on_cuda)
            self._dev = torch.empty(n, dtype=torch.int64, device=self.device)
        return self._host.numpy(), self._dev

    @torch.inference_mode()
    def embed_rows(self, rows: Sequence[np.ndarray]) -> torch.Tensor:
        """Unpadded token rows -> [n, dim] fp32 on the device, in the rows' order."""
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        chunks = bk.plan(lengths, self.buckets)
        sizes = [2 * c.batch * c.seq for c in chunks]
        offsets = np.cumsum([0, *sizes])
        host, dev = self._staging(int(offsets[-1]))
        left = self.opts.padding_side == "left"
        for c, o, size in zip(chunks, offsets, sizes, strict=False):
            view = host[o : o + size].reshape(2, c.batch, c.seq)
            bk.pad_into([rows[i] for i in c.rows], c.batch, c.seq, left=left, out=view)
        dev[: offsets[-1]].copy_(self._host[: offsets[-1]], non_blocking=True)  # the one H2D copy
        if self.on_cuda:
            self._copied = torch.cuda.Event()
            self._copied.record()
        sorted_out: torch.Tensor | None = None
        start = 0
        for c, o, size in zip(chunks, offsets, sizes, strict=False):
            ids, mask = dev[o : o + size].view(2, c.batch, c.seq)
            emb = self._run((c.batch, c.seq), ids, mask)
            if sorted_out is None:
                sorted_out = torch.empty((len(rows), emb.shape[1]), dtype=torch.float32, device=self.device)
            sorted_out[start : start + len(c.rows)].copy_(emb[: len(c.rows)])
            start += len(c.rows)
        assert sorted_out is not None
        inv = bk.inverse(np.concatenate([c.rows for c in chunks]))
        return sorted_out.index_select(0, torch.from_numpy(inv).to(self.device))

    @torch.inference_mode()
    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """[n, 3, H, W] -> [n, dim] fp32, in chunks of the largest batch bucket padded to a bucket."""
        pixels = pixels.to(self.device, self.dtype, non_blocking=True)
        parts = []
        for rows in bk.split_rows(pixels.shape[0], self.buckets.max_batch):
            n = rows.stop - rows.start
            b = next(x for x in self.buckets.batch if x >= n)
            padded = pixels[rows]
            if b > n:
                padded = torch.cat([padded, padded.new_zeros((b - n, *padded.shape[1:]))])
            parts.append(self._run((b, IMAGE_KEY), padded)[:n].clone())
        return torch.cat(parts)


def _params(config: dict[str, Any]) -> dict[str, str]:
    return {k: v["string_value"] for k, v in config.get("parameters", {}).items()}


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = _params(config)
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        device = params.get("device", "cuda")
        if device == "cuda":
            device = f"cuda:{args.get('model_instance_device_id', '0')}"
            if not torch.cuda.is_available():
                raise RuntimeError("torch-cuda engine: CUDA is not available in the python-backend stub")
        self.input_names = [i["name"] for i in config["input"]]
        self.output_name = config["output"][0]["name"]
        self.engine = Engine.load(
            os.path.join(version_dir, params.get("model_dir", "torch")),
            bk.BucketSet.parse(params["buckets"]),
            EngineOptions.from_params(params),
            device,
        )
        self.engine.capture()

    def _error(self, text: str) -> Any:
        return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(text))

    def _inputs(self, request: Any) -> list[np.ndarray]:
        """Host arrays of one request. Inputs only arrive on the GPU from a CUDA-shm client on this node;
        they are small (ids), so those are brought to the host for the row plan too."""
        out = []
        for name in self.input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            out.append(
                tensor.as_numpy() if tensor.is_cpu() else torch.from_dlpack(tensor.to_dlpack()).cpu().numpy()
            )
        return out

    def execute(self, requests: list[Any]) -> list[Any]:
        arrays: list[list[np.ndarray]] = []
        errors: dict[int, str] = {}
        rows: list[np.ndarray] = []
        sizes: list[int] = []
        for i, request in enumerate(requests):
            tensors = self._inputs(request)
            try:
                if not self.engine.is_image:
                    new_rows, _ = bk.merge_rows([(tensors[0], tensors[1])])
                    if any(len(r) > self.engine.buckets.max_seq for r in new_rows):
                        raise ValueError(f"a row exceeds {self.engine.buckets.max_seq} tokens")
                    rows.extend(new_rows)
            except ValueError as exc:
                errors[i] = str(exc)
                continue
            arrays.append(tensors)
            sizes.append(tensors[0].shape[0])
        try:
            if not sizes:
                merged = None
            elif self.engine.is_image:
                merged = self.engine.embed_pixels(torch.from_numpy(np.concatenate([a[0] for a in arrays])))
            else:
                merged = self.engine.embed_rows(rows)
            if merged is not None and self.engine.on_cuda:
                torch.cuda.current_stream(self.engine.device).synchronize()  # outputs ready; staging reusable
        except Exception as exc:  # one failing batch fails its requests, never the model instance
            return [self._error(f"torch-cuda engine failed: {exc}") for _ in requests]
        parts = iter(bk.split_sizes(merged, sizes) if merged is not None else [])
        responses = []
        for i in range(len(requests)):
            if i in errors:
                responses.append(self._error(errors[i]))
                continue
            tensor = pb_utils.Tensor.from_dlpack(self.output_name, to_dlpack(next(parts)))
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
        return responses

    def finalize(self) -> None:
        self.engine.graphs.clear()
