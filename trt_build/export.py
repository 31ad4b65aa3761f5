"""Export a registry text encoder to ONNX with pooling inside the graph.

Pooling in the graph means Triton returns [batch, dim] instead of [batch, seq, hidden]: less data on the
wire and the same I/O signature for every engine (ONNX Runtime, TensorRT, torch-cuda). The pooling is
trt_build.pooling, the code the torch-cuda and vlm engines run. L2 normalization is left to the gateway
(services.vectors): it must follow Matryoshka truncation, and `normalize: false` requests need the raw
pooled vector.
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


def _pooled_module(spec: ModelSpec, model_dir: Path) -> torch.nn.Module:
    """The HF encoder with the registry's pooling (trt_build.pooling, the torch-cuda engine's own), eager
    attention: what the legacy exporter traces."""
    from transformers import AutoModel

    from trt_build.pooling import PooledEncoder

    if spec.pooling == "none":
        raise ValueError(f"pooling {spec.pooling!r} cannot be exported for a text encoder")
    encoder = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager")
    return PooledEncoder(encoder.eval(), spec.pooling).eval()


def export_module(
    module: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    input_names: tuple[str, ...],
    output_name: str,
    out_path: Path,
    sequence: bool = True,
) -> dict[str, float]:
    """Export with a dynamic batch axis, and a dynamic sequence axis on token inputs (legacy exporter: the
    dynamo one mishandles them), written beside the target and renamed into place so a crash never
    leaves half a graph."""
    import torch

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".onnx.tmp")
    dims = {0: "batch", 1: "sequence"} if sequence else {0: "batch"}
    axes: dict[str, dict[int, str]] = {name: dict(dims) for name in input_names}
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
