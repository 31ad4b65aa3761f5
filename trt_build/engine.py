"""FP16 TensorRT engine build from the exported ONNX, against the real `tensorrt` Python API.

TensorRT is not installable on the CPU machines this project is developed on (PyPI's `tensorrt` packages
only fetch from NVIDIA's index), so `build_engine` reports a skip when the module is missing. It never
writes a placeholder file: a `model.plan` in the repository is always a real engine.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trt_build.profiles import Profile


@dataclass(frozen=True)
class EngineResult:
    built: bool
    reason: str
    path: Path | None = None


def tensorrt_available() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    profile: Profile,
    inputs: tuple[str, ...],
    fp16: bool = True,
    workspace_gb: float = 4.0,
) -> EngineResult:
    if not tensorrt_available():
        return EngineResult(
            False,
            "tensorrt is not importable on this machine; engine build skipped "
            "(build on a GPU node with TensorRT, e.g. the NGC tritonserver image)",
        )
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT >= 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        return EngineResult(False, f"ONNX parse failed: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if fp16 and builder.platform_has_fast_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    opt_profile = builder.create_optimization_profile()
    for name in inputs:
        opt_profile.set_shape(name, profile.min, profile.opt, profile.max)
    config.add_optimization_profile(opt_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        return EngineResult(False, "TensorRT returned no engine (see the builder log above)")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(serialized))
    return EngineResult(True, "built", plan_path)


def run_engine(plan_path: Path, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:  # pragma: no cover - GPU
    """Run a built plan once (parity check). Needs tensorrt and torch with CUDA for the buffers."""
    import tensorrt as trt
    import torch

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(plan_path.read_bytes())
    context = engine.create_execution_context()
    tensors = {"input_ids": torch.from_numpy(ids).cuda(), "attention_mask": torch.from_numpy(mask).cuda()}
    for name, tensor in tensors.items():
        context.set_input_shape(name, tuple(tensor.shape))
    out = torch.empty(tuple(context.get_tensor_shape("embeddings")), dtype=torch.float32, device="cuda")
    tensors["embeddings"] = out
    for name, tensor in tensors.items():
        context.set_tensor_address(name, tensor.data_ptr())
    stream = torch.cuda.current_stream()
    context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    return out.cpu().numpy()
