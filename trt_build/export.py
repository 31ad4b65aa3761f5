"""Export a registry text encoder to ONNX with pooling inside the graph.

Pooling in the graph means Triton returns [batch, dim] instead of [batch, seq, hidden]: less data on the
wire and the same I/O signature for every engine (ONNX Runtime, TensorRT, torch-cuda). L2 normalization
is left to the gateway (services.vectors): it must follow Matryoshka truncation, and `normalize: false`
requests need the raw pooled vector.
"""

from __future__ import annotations

import time
from pathlib import Path

from services.registry import ModelSpec

INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "embeddings"
OPSET = 17


def _pooled_module(spec: ModelSpec, model_dir: Path):  # type: ignore[no-untyped-def]
    """Wrap the HF encoder with the registry's pooling."""
    import torch
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager")
    encoder.eval()

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if "token_type_ids" in self.encoder.forward.__code__.co_varnames:
                kwargs["token_type_ids"] = torch.zeros_like(input_ids)
            hidden = self.encoder(**kwargs).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            if spec.pooling == "mean":
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            elif spec.pooling == "cls":
                pooled = hidden[:, 0]
            elif spec.pooling == "last-token":
                last = attention_mask.sum(1) - 1
                pooled = hidden[torch.arange(hidden.shape[0]), last]
            else:
                raise ValueError(f"pooling {spec.pooling!r} cannot be exported for a text encoder")
            return pooled

    return Pooled().eval()


def export_onnx(spec: ModelSpec, model_dir: Path, out_path: Path) -> dict[str, float]:
    """Export with dynamic batch and sequence axes (legacy exporter: the dynamo one mishandles them)."""
    import torch

    module = _pooled_module(spec, model_dir)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".onnx.tmp")
    ids = torch.ones((2, 8), dtype=torch.int64)
    mask = torch.ones((2, 8), dtype=torch.int64)
    start = time.perf_counter()
    with torch.no_grad():
        torch.onnx.export(
            module,
            (ids, mask),
            str(tmp),
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                OUTPUT_NAME: {0: "batch"},
            },
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    tmp.replace(out_path)
    return {"export_s": time.perf_counter() - start, "onnx_mb": out_path.stat().st_size / 1e6}
