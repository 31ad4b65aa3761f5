"""The encoder protocol: what the batcher calls to turn a padded batch into vectors."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Encoder(Protocol):
    async def embed_tokens(self, model: str, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """[batch, seq] int64 ids and mask -> [batch, dim] float32 pooled vectors."""
        ...

    async def embed_pixels(self, model: str, pixel_values: np.ndarray) -> np.ndarray:
        """[batch, 3, H, W] float32 -> [batch, dim] float32."""
        ...

    async def score_pairs(
        self, model: str, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray
    ) -> np.ndarray:
        """[pairs, seq] ids, mask and segment ids of (query, document) pairs -> [pairs] float32 logits."""
        ...

    async def embed_vlm(
        self,
        model: str,
        input_ids: np.ndarray,
        item_lengths: np.ndarray,
        position_ids: np.ndarray,
        pixel_values: np.ndarray,
        grid_thw: np.ndarray,
    ) -> np.ndarray:
        """A group of VLM items, flat and unpadded, pixels as uint8 patches (trt_build/vlm_model.py) ->
        [items, dim] float32."""
        ...

    async def is_ready(self, model: str) -> bool: ...

    async def close(self) -> None: ...
