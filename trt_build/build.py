"""`embedfleet build MODEL --target cpu|gpu`: export, check, and write the Triton repository entry.

Idempotent: a stamp (`.build.json`, trt_build/stamps.py) records a digest of every input (registry entry,
weights, build code, target options); a second run with the same inputs does nothing and says so.
`vlm` models build in trt_build/vlm_build.py.
"""

from __future__ import annotations

import json
import shutil
import time
from functools import partial
from pathlib import Path

from services.config import Settings
from services.registry import Kind, ModelSpec, Registry
from trt_build import engine as trt_engine
from trt_build.model_files import install_model
from trt_build.parity import MIN_COSINE, TextReference, check_parity, ort_run, require
from trt_build.profiles import text_profile, trtexec_shapes
from trt_build.stamps import BUILD_CODE, STAMP, BuildReport, inputs_digest, up_to_date, write_stamp
from trt_build.triton_config import CpuOptions, cpu_config, gpu_config, token_inputs


def _model_dir(spec: ModelSpec, settings: Settings) -> Path | None:
    if not spec.has_source_dir:
        return None  # built from its transformers config: nothing on disk
    if spec.source.type == "split-zip":
        from trt_build.weights import materialize

        return materialize(spec)  # where ModelSpec.source_dir() (and so the tokenizer) looks
    return spec.source_dir()


def build(
    registry: Registry, name: str, settings: Settings, target: str = "cpu", force: bool = False
) -> BuildReport:
    spec = registry.get(name)
    report = BuildReport(spec.name, target)
    if spec.kind is Kind.dual_tower:
        report.say(f"dual-tower model: nothing to build; build its towers {sorted(spec.towers.values())}")
        report.up_to_date = True
        return report
    if spec.kind is Kind.vlm:
        from trt_build.vlm_build import build_vlm

        return build_vlm(spec, settings, target, force, report)
    if spec.kind is Kind.cross_encoder and target == "torch-cuda":
        raise ValueError(f"{spec.name}: cross-encoders build for --target cpu or gpu, not torch-cuda")
    repo = settings.model_repository
    model_root = repo / spec.triton_name
    version_dir = model_root / spec.version
    onnx_path = repo / spec.engines.get("onnx", f"{spec.triton_name}/{spec.version}/model.onnx")
    opts = CpuOptions(instance_count=settings.triton_instance_count, ort_threads=settings.triton_ort_threads)
    model_dir = _model_dir(spec, settings)
    stamp_inputs = json.dumps(
        {"spec": spec.model_dump(mode="json"), "target": target, "opts": opts.__dict__}, sort_keys=True
    )
    digest = inputs_digest([p for p in (model_dir, *BUILD_CODE) if p is not None], stamp_inputs)
    stamp_path = model_root / STAMP
    if not force and up_to_date(stamp_path, digest, onnx_path.exists() or target == "torch-cuda", report):
        return report

    version_dir.mkdir(parents=True, exist_ok=True)
    if target == "torch-cuda":
        from trt_build.torch_target import TorchCudaOptions, write_torch_cuda_entry

        if model_dir is None:
            raise ValueError(f"{spec.name}: torch-cuda serves a model folder; {spec.source.type} has none")
        torch_opts = TorchCudaOptions(
            dtype=settings.torch_dtype,
            cuda_graphs=settings.torch_cuda_graphs,
            compile_mode=settings.torch_compile,
        )
        write_torch_cuda_entry(spec, model_root, model_dir, torch_opts)
        report.say(f"wrote Triton torch-cuda entry {model_root} (CUDA graphs {torch_opts.cuda_graphs})")
        write_stamp(stamp_path, digest, report)
        return report
    if spec.kind is Kind.cross_encoder:
        from trt_build.cross_encoder import export_and_check

        assert model_dir is not None  # the registry requires a tokenizer folder
        report.figures.update(export_and_check(spec, model_dir, onnx_path, report.say))
        if _tensorrt_step(spec, onnx_path, repo, target, report) is not None:
            report.say(
                "warning: TensorRT parity is not checked for cross-encoders (run_engine takes 2 inputs)"
            )
    elif spec.source.type == "random-init":
        from trt_build.towers import export_tower

        figures = export_tower(spec, onnx_path)
        report.figures["parity_onnx"] = figures
        report.say(
            f"exported random-init {spec.source.architecture} tower {onnx_path} "
            f"({figures['onnx_mb']:.0f} MB, min cosine vs torch {figures['min_cosine']:.7f})"
        )
        if figures["min_cosine"] < MIN_COSINE:
            raise RuntimeError(f"{spec.name}: ONNX parity {figures['min_cosine']:.7f} < {MIN_COSINE}")
    elif spec.kind is Kind.image_encoder:
        assert model_dir is not None
        src = model_dir / "model.onnx"
        shutil.copyfile(src, onnx_path)
        report.say(f"copied image tower {src} -> {onnx_path}")
    else:
        from trt_build.export import export_onnx

        assert model_dir is not None
        started = time.perf_counter()
        figures = export_onnx(spec, model_dir, onnx_path)
        report.figures.update(figures)
        report.say(
            f"exported ONNX {onnx_path} ({figures['onnx_mb']:.1f} MB) in {time.perf_counter() - started:.1f}s"
        )
        reference = TextReference.load(spec, model_dir)
        parity = check_parity("onnxruntime", ort_run(onnx_path), reference)
        report.figures["parity_onnx"] = {"max_abs_diff": parity.max_abs_diff, "min_cosine": parity.min_cosine}
        require(spec.name, parity, report.say)
        plan = _tensorrt_step(spec, onnx_path, repo, target, report)
        if plan is not None:
            require(
                spec.name,
                check_parity("tensorrt", partial(trt_engine.run_engine, plan), reference),
                report.say,
            )

    write_repository_entry(spec, model_root, target, opts)
    report.say(f"wrote Triton {target} entry {model_root}/config.pbtxt")
    write_stamp(stamp_path, digest, report)
    return report


def _tensorrt_step(
    spec: ModelSpec, onnx_path: Path, repo: Path, target: str, report: BuildReport
) -> Path | None:
    """Record the registry's TensorRT profile; for `gpu`, build the engine. Returns the plan when built."""
    inputs = token_inputs(spec)
    profile = text_profile(spec)
    report.figures["trt_profile"] = profile.as_dict()
    report.say(f"TensorRT profile {profile.as_dict()} ({' '.join(trtexec_shapes(profile, inputs))})")
    if target != "gpu":
        return None
    result = trt_engine.build_engine(onnx_path, repo / spec.engines.get("tensorrt", ""), profile, inputs)
    report.say(f"TensorRT engine: {result.reason}")
    return result.path if result.built else None


def write_repository_entry(spec: ModelSpec, model_root: Path, target: str, opts: CpuOptions) -> None:
    version_dir = model_root / spec.version
    version_dir.mkdir(parents=True, exist_ok=True)
    if target == "cpu":
        (model_root / "config.pbtxt").write_text(cpu_config(spec, opts))
        install_model("python_model.py", version_dir)
        shutil.rmtree(model_root / "configs", ignore_errors=True)
    else:
        (model_root / "config.pbtxt").write_text(gpu_config(spec, "tensorrt"))
        (model_root / "configs").mkdir(exist_ok=True)
        (model_root / "configs" / "onnxruntime.pbtxt").write_text(gpu_config(spec, "onnxruntime"))
        (version_dir / "model.py").unlink(missing_ok=True)
