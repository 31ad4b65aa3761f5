"""Deterministic Triton `config.pbtxt` generation for the two targets, with one I/O signature.

- cpu: python-backend model (`model.py` = trt_build/python_model.py) running ONNX Runtime, ragged inputs
  so requests of different lengths merge, rows re-sorted by length inside execute().
- gpu: native `tensorrt_plan` as `config.pbtxt`, plus `configs/onnxruntime.pbtxt` (select it with
  `tritonserver --model-config-name=onnxruntime`) for GPU nodes without a built engine.

Text is written by hand (not protobuf text_format) so it is byte-stable across protobuf versions and
readable in review; tests compare it verbatim.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.registry import Kind, ModelSpec

TEXT_INPUTS = ("input_ids", "attention_mask")
PAIR_INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # cross-encoder: tokenized (query, doc) pairs
IMAGE_INPUT = "pixel_values"
OUTPUT = "embeddings"
SCORES = "scores"  # cross-encoder: one raw logit per pair


@dataclass(frozen=True)
class CpuOptions:
    instance_count: int = 1
    ort_threads: int = 2
    queue_delay_us: int = 200


def token_inputs(spec: ModelSpec) -> tuple[str, ...]:
    """The token tensors a text model takes: the TensorRT profile and the config name the same ones."""
    return PAIR_INPUTS if spec.kind is Kind.cross_encoder else TEXT_INPUTS


def _io_block(spec: ModelSpec, ragged: bool) -> str:
    lines = ["input ["]
    if spec.kind is Kind.image_encoder:
        size = spec.image.size if spec.image else 224
        dims = f"dims: [ 3, {size}, {size} ]"
        entries = [f'  {{\n    name: "{IMAGE_INPUT}"\n    data_type: TYPE_FP32\n    {dims}\n  }}']
    else:
        extra = "\n    allow_ragged_batch: true" if ragged else ""
        entries = [
            f'  {{\n    name: "{name}"\n    data_type: TYPE_INT64\n    dims: [ -1 ]{extra}\n  }}'
            for name in token_inputs(spec)
        ]
    lines.append(",\n".join(entries))
    lines.append("]")
    lines.append("output [")
    if spec.kind is Kind.cross_encoder:
        # the graph returns [batch]; Triton needs non-empty dims, so clients see [batch, 1]
        lines.append(
            f'  {{\n    name: "{SCORES}"\n    data_type: TYPE_FP32\n    dims: [ 1 ]\n'
            "    reshape: { shape: [ ] }\n  }"
        )
    else:
        lines.append(
            f'  {{\n    name: "{OUTPUT}"\n    data_type: TYPE_FP32\n    dims: [ {spec.dimension} ]\n  }}'
        )
    lines.append("]")
    return "\n".join(lines)


def _param(key: str, value: object) -> str:
    return f'parameters: {{\n  key: "{key}"\n  value: {{ string_value: "{value}" }}\n}}'


def _preferred(spec: ModelSpec) -> str:
    sizes = sorted({s for s in (spec.batching.opt_batch_size, spec.batching.max_batch_size) if s >= 1})
    return ", ".join(str(s) for s in sizes)


def cpu_config(spec: ModelSpec, opts: CpuOptions) -> str:
    parts = [
        f'name: "{spec.triton_name}"',
        'backend: "python"',
        f"max_batch_size: {spec.batching.max_batch_size}",
        f"dynamic_batching {{\n  max_queue_delay_microseconds: {opts.queue_delay_us}\n}}",
        _io_block(spec, ragged=spec.kind is not Kind.image_encoder),
        f"instance_group [\n  {{\n    count: {opts.instance_count}\n    kind: KIND_CPU\n  }}\n]",
        _param("onnx_file", "model.onnx"),
        _param("intra_op_threads", opts.ort_threads),
        _param("max_batch_tokens", spec.batching.max_batch_tokens),
        _param("registry_version", spec.version),
    ]
    return "\n".join(parts) + "\n"


def gpu_config(spec: ModelSpec, engine: str = "tensorrt") -> str:
    """`tensorrt` (config.pbtxt) or `onnxruntime` (configs/onnxruntime.pbtxt): same I/O, same batching."""
    platform, filename = {
        "tensorrt": ("tensorrt_plan", "model.plan"),
        "onnxruntime": ("onnxruntime_onnx", "model.onnx"),
    }[engine]
    parts = [
        f'name: "{spec.triton_name}"',
        f'platform: "{platform}"',
        f'default_model_filename: "{filename}"',
        f"max_batch_size: {spec.batching.max_batch_size}",
        "dynamic_batching {\n"
        f"  preferred_batch_size: [ {_preferred(spec)} ]\n"
        "  max_queue_delay_microseconds: 100\n"
        "}",
        _io_block(spec, ragged=False),
        "instance_group [\n  {\n    count: 1\n    kind: KIND_GPU\n  }\n]",
        _param("registry_version", spec.version),
    ]
    return "\n".join(parts) + "\n"
