"""Triton encoder over gRPC (tritonclient.grpc.aio): ~0.15 ms of client CPU per call.

Connection failures and deadlines become `EncoderUnavailable` (503 + Retry-After). The channel's
reconnect backoff is capped at one second so a restarted Triton is picked up quickly; after a failure the
client is rebuilt on the next call, so no gateway restart is ever needed.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from services import metrics
from services.errors import EmbedfleetError, EncoderUnavailable, InvalidInput

CHANNEL_ARGS = [
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", 10_000),
]
UNAVAILABLE_STATUSES = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "UNKNOWN")


def _input(name: str, array: np.ndarray, dtype: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), dtype)
    tensor.set_data_from_numpy(array)
    return tensor


class TritonEncoder:
    def __init__(self, url: str, timeout_s: float = 30.0, retry_after_s: int = 1) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self._client: grpcclient.InferenceServerClient | None = None

    @property
    def client(self) -> grpcclient.InferenceServerClient:
        if self._client is None:
            self._client = grpcclient.InferenceServerClient(self.url, channel_args=CHANNEL_ARGS)
        return self._client

    async def _reset(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):  # a broken channel may fail to close; dropped either way
                await client.close()

    def _classify(self, model: str, exc: Exception) -> EmbedfleetError:
        status = str(getattr(exc, "status", lambda: "")() or "")
        text = str(exc)
        if isinstance(exc, InferenceServerException) and not any(s in status for s in UNAVAILABLE_STATUSES):
            if "not found" in text or "unknown model" in text or "not ready" in text or "unavailable" in text:
                return EncoderUnavailable(
                    f"model {model} is not ready in Triton", retry_after=self.retry_after_s
                )
            if "INVALID_ARG" in status:
                return InvalidInput(f"Triton rejected the batch for {model}: {text}")
            return EmbedfleetError(f"Triton error for {model}: {text}")
        return EncoderUnavailable(
            f"Triton at {self.url} is unreachable ({status or type(exc).__name__})",
            retry_after=self.retry_after_s,
        )

    async def _infer(
        self, model: str, inputs: list[grpcclient.InferInput], output: str = "embeddings"
    ) -> np.ndarray:
        started = time.perf_counter()
        try:
            result = await self.client.infer(
                model,
                inputs,
                outputs=[grpcclient.InferRequestedOutput(output)],
                client_timeout=self.timeout_s,
            )
        except Exception as exc:  # grpc raises InferenceServerException, OSError or grpc errors
            err = self._classify(model, exc)
            metrics.TRITON_LATENCY.labels(model, "error").observe(time.perf_counter() - started)
            if isinstance(err, EncoderUnavailable):
                await self._reset()
            raise err from exc
        metrics.TRITON_LATENCY.labels(model, "ok").observe(time.perf_counter() - started)
        out = result.as_numpy(output)
        if out is None:
            raise EmbedfleetError(f"Triton returned no {output!r} for {model}")
        return out

    async def embed_tokens(self, model: str, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return await self._infer(
            model,
            [_input("input_ids", input_ids, "INT64"), _input("attention_mask", attention_mask, "INT64")],
        )

    async def embed_pixels(self, model: str, pixel_values: np.ndarray) -> np.ndarray:
        return await self._infer(
            model, [_input("pixel_values", pixel_values.astype(np.float32, copy=False), "FP32")]
        )

    async def score_pairs(
        self, model: str, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray
    ) -> np.ndarray:
        inputs = [
            _input("input_ids", input_ids, "INT64"),
            _input("attention_mask", attention_mask, "INT64"),
            _input("token_type_ids", token_type_ids, "INT64"),
        ]
        return (await self._infer(model, inputs, "scores")).reshape(-1)  # the engine answers [pairs, 1]

    async def embed_vlm(
        self,
        model: str,
        input_ids: np.ndarray,
        item_lengths: np.ndarray,
        position_ids: np.ndarray,
        pixel_values: np.ndarray,
        grid_thw: np.ndarray,
    ) -> np.ndarray:
        """One Triton request per group of items (leading batch dimension 1, ragged inputs); the pixel
        inputs are optional and left out for a text-only group. Pixels travel as uint8 patches (the
        engine rescales and normalises them)."""
        inputs = [
            _input("input_ids", input_ids[None], "INT64"),
            _input("item_lengths", item_lengths[None], "INT64"),
            _input("position_ids", position_ids[None], "INT64"),
        ]
        if len(grid_thw):
            inputs.append(_input("pixel_values", pixel_values[None], "UINT8"))
            inputs.append(_input("grid_thw", grid_thw[None], "INT64"))
        out = await self._infer(model, inputs)
        return out.reshape(len(item_lengths), -1)

    async def is_ready(self, model: str) -> bool:
        try:
            return bool(await self.client.is_model_ready(model, client_timeout=2.0))
        except Exception:
            await self._reset()
            return False

    async def close(self) -> None:
        await self._reset()
