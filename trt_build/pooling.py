"""Pooling and L2 normalization: the one copy that every engine runs.

The ONNX export traces it into the graph (so ONNX Runtime and TensorRT run it), the torch-cuda and vlm
python-backend models call it on the device: the engines cannot disagree on which token is pooled. It
imports only torch, because the build copies it beside those models' `model.py` in the Triton repository
(trt_build/model_files.py), where they import it as a sibling module (`from . import pooling`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F

POOLINGS = ("mean", "cls", "last-token", "none")  # the registry's `pooling` values
EPS = 1e-12  # a zero vector stays zero instead of becoming NaN


def _fp32(x: torch.Tensor) -> torch.Tensor:
    """fp32 without tracing a no-op Cast into an fp32 ONNX graph."""
    return x if x.dtype == torch.float32 else x.float()


def last_positions(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token: its largest set mask position.

    VLM2Vec (`model.py::_pooling`) reads the padding side off the whole batch (every row's last column
    set: left padding, take the last column; else `mask.sum(1) - 1`). Per row, the largest set position
    is the same token on such batches, needs no data-dependent branch (it traces into ONNX and replays in
    CUDA graphs), and stays right when a bucket adds all-padding rows to a left-padded batch."""
    positions = torch.arange(mask.shape[1], device=mask.device)
    return (mask.to(torch.int64) * positions).amax(1)


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """[batch, seq, hidden] token states -> [batch, hidden] fp32 by a token-level registry pooling.

    fp32 because fp16/bf16 engines would otherwise sum a long mean in half precision."""
    if pooling == "mean":
        weights = mask.unsqueeze(-1).to(torch.float32)
        return (_fp32(hidden) * weights).sum(1) / weights.sum(1).clamp(min=1.0)
    if pooling == "cls":
        return _fp32(hidden[:, 0])
    if pooling == "last-token":
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return _fp32(hidden[rows, last_positions(mask)])
    raise ValueError(f"pooling {pooling!r} is not a token pooling (known: {', '.join(POOLINGS)})")


def own_embedding(output: Any) -> torch.Tensor:
    """`none` pooling, the model pools itself: its projected embedding where the architecture has one
    (CLIP ...WithProjection: `image_embeds`, `text_embeds`), else its pooler output (SigLIP)."""
    for name in ("image_embeds", "text_embeds", "pooler_output"):
        value = getattr(output, name, None)
        if value is not None:
            return _fp32(value)
    raise ValueError("pooling 'none': the model output has no pooled embedding")


def embed(output: Any, mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """A transformers model output -> [batch, dim] fp32 embeddings by the registry's pooling."""
    if pooling == "none":
        return own_embedding(output)
    if mask is None:
        raise ValueError(f"pooling {pooling!r} needs the attention mask")
    return pool(output.last_hidden_state, mask, pooling)


class PooledEncoder(torch.nn.Module):
    """A transformers encoder with the registry's pooling: ids and mask in, [batch, dim] fp32 out, the
    signature every text engine serves. Token types are left to the encoder (zeros: one segment)."""

    def __init__(self, encoder: torch.nn.Module, pooling: str) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        output = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        return embed(output, attention_mask, self.pooling)


def l2_normalize(vectors: torch.Tensor) -> torch.Tensor:
    """Unit rows. Text engines leave this to the gateway (it follows Matryoshka truncation); the VLM engine
    returns normalized vectors as VLM2Vec does, and parity compares directions."""
    return F.normalize(vectors, p=2.0, dim=-1, eps=EPS)
