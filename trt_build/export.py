"""Export a registry text encoder to ONNX with pooling inside the graph.

Pooling in the graph means Triton returns [batch, dim] instead of [batch, seq, hidden]: less data on the
wire and the same I/O signature for every engine (ONNX Runtime, TensorRT, torch-cuda). L2 normalization
is left to the gateway (services.vectors): it must follow Matryoshka truncation, and `normalize: false`
requests need the raw pooled vector.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from services.registry import ModelSpec

if TYPE_CHECKING:
    import torch

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


def export_module(
    module: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    input_names: tuple[str, ...],
    output_name: str,
    out_path: Path,
) -> dict[str, float]:
    """Export token inputs with dynamic batch and sequence axes (legacy exporter: the dynamo one mishandles
    them), written beside the target and renamed into place so a crash never leaves half a graph."""
    import torch

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".onnx.tmp")
    axes: dict[str, dict[int, str]] = {name: {0: "batch", 1: "sequence"} for name in input_names}
    start = time.perf_counter()
    with torch.no_grad():
        torch.onnx.export(
            module,
            example,
            str(tmp),
            input_names=list(input_names),
            output_names=[output_name],
            dynamic_axes={**axes, output_name: {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    tmp.replace(out_path)
    return {"export_s": time.perf_counter() - start, "onnx_mb": out_path.stat().st_size / 1e6}


def export_onnx(spec: ModelSpec, model_dir: Path, out_path: Path) -> dict[str, float]:
    import torch

    ids = torch.ones((2, 8), dtype=torch.int64)
    return export_module(
        _pooled_module(spec, model_dir), (ids, ids.clone()), INPUT_NAMES, OUTPUT_NAME, out_path
    )
