"""torch-cuda target: deterministic config (golden, valid ModelConfig, same I/O as cpu), the repository
entry, and the engine's forward path on CPU against an eager per-row reference. CUDA-graph capture and
replay are tested only where CUDA exists."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from services.registry import load_registry
from tests.unit.trt_build.tiny_bert import save_tiny_bert
from trt_build.buckets import BucketSet
from trt_build.pooling import pool
from trt_build.torch_cuda_model import Engine, EngineOptions
from trt_build.torch_target import TorchCudaOptions, buckets_for, torch_cuda_config, write_torch_cuda_entry
from trt_build.triton_config import CpuOptions, cpu_config

GOLDEN = Path(__file__).with_name("golden")
REGISTRY = load_registry()
SPEC = REGISTRY.get("all-minilm-l6-v2")
CUDA = torch.cuda.is_available()


def _parse(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def _io(cfg: model_config_pb2.ModelConfig) -> list[tuple[str, int, list[int], bool]]:
    return [
        (t.name, t.data_type, list(t.dims), getattr(t, "allow_ragged_batch", False)) for t in cfg.input
    ] + [(t.name, t.data_type, list(t.dims), False) for t in cfg.output]


def test_config_matches_golden_and_parses() -> None:
    text = torch_cuda_config(SPEC)
    assert text == torch_cuda_config(SPEC), "generation must be deterministic"
    assert text == (GOLDEN / "all-minilm-l6-v2.torch-cuda.pbtxt").read_text()
    cfg = _parse(text)
    assert cfg.backend == "python" and cfg.max_batch_size == SPEC.batching.max_batch_size
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert list(cfg.dynamic_batching.preferred_batch_size) == list(buckets_for(SPEC).batch)
    assert cfg.dynamic_batching.max_queue_delay_microseconds <= 500
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert BucketSet.parse(params["buckets"]) == BucketSet.from_spec(SPEC)
    assert params["dtype"] == "float16" and params["compile"] == "none" and params["pooling"] == "mean"


def test_same_io_signature_as_cpu() -> None:
    assert _io(_parse(torch_cuda_config(SPEC))) == _io(_parse(cpu_config(SPEC, CpuOptions())))


def test_image_tower_config() -> None:
    spec = REGISTRY.get("lit-shapes-image")
    cfg = _parse(torch_cuda_config(spec, TorchCudaOptions(dtype="bfloat16", compile_mode="max-autotune")))
    assert _io(cfg) == _io(_parse(cpu_config(spec, CpuOptions())))
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert params["image_size"] == "64" and params["dtype"] == "bfloat16"
    assert params["compile"] == "max-autotune"
    assert BucketSet.parse(params["buckets"]).seq == (1,)


def test_write_entry(tmp_path: Path) -> None:
    src = tmp_path / "hf"
    src.mkdir()
    (src / "config.json").write_text("{}")
    (src / "model.safetensors").write_bytes(b"w")
    (src / "README.md").write_text("not copied")
    root = tmp_path / "repo" / SPEC.triton_name
    weights = write_torch_cuda_entry(SPEC, root, src)
    assert weights == tmp_path / "repo" / SPEC.engines["torch"]
    assert sorted(p.name for p in weights.iterdir()) == ["config.json", "model.safetensors"]
    version = root / SPEC.version
    assert (version / "model.py").read_text() == Path("trt_build/torch_cuda_model.py").read_text()
    assert (version / "buckets.py").exists() and (version / "pooling.py").exists()
    params = {k: v.string_value for k, v in _parse((root / "config.pbtxt").read_text()).parameters.items()}
    assert (version / params["model_dir"]).resolve() == weights.resolve()


def test_model_file_imports_nothing_from_the_project() -> None:
    """The stub runs model.py alone; only its siblings (buckets.py, pooling.py) travel with it."""
    tree = ast.parse(Path("trt_build/torch_cuda_model.py").read_text())
    top = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    top |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
    assert not top & {"services", "trt_build", "gateway", "bench"}


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def _reference(path: Path, rows: list[np.ndarray], pooling: str) -> np.ndarray:
    """Each row alone, unpadded, eager attention: what the bucketed, merged path must reproduce."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(path), attn_implementation="eager").eval()
    out = []
    with torch.no_grad():
        for r in rows:
            ids = torch.from_numpy(r)[None]
            mask = torch.ones_like(ids)
            out.append(pool(model(input_ids=ids, attention_mask=mask).last_hidden_state, mask, pooling)[0])
    return torch.stack(out).numpy()


def _rows(n: int, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, 100, size=int(k)).astype(np.int64) for k in rng.integers(1, 40, size=n)]


@pytest.mark.parametrize(("pooling", "side"), [("mean", "right"), ("cls", "right"), ("last-token", "right")])
def test_engine_cpu_matches_eager_reference(tiny_bert: Path, pooling: str, side: str) -> None:
    rows = _rows(23)
    engine = Engine.load(
        str(tiny_bert),
        BucketSet.from_limits(8, 64, max_tokens=256),
        EngineOptions(pooling=pooling, padding_side=side, dtype="float32"),
        "cpu",
    )
    got = engine.embed_rows(rows).numpy()
    assert got.shape == (23, 32) and got.dtype == np.float32
    np.testing.assert_allclose(got, _reference(tiny_bert, rows, pooling), atol=1e-4, rtol=1e-4)


def test_engine_image_tower_cpu(tmp_path: Path) -> None:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        image_size=32, patch_size=16, projection_dim=24,
    )  # fmt: skip
    model = CLIPVisionModelWithProjection(cfg).eval()
    model.save_pretrained(tmp_path)
    engine = Engine.load(str(tmp_path), BucketSet.from_limits(4, 1), EngineOptions(image_size=32), "cpu")
    pixels = torch.randn(6, 3, 32, 32)
    got = engine.embed_pixels(pixels)
    with torch.no_grad():
        ref = model(pixel_values=pixels).image_embeds
    assert got.shape == (6, 24)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not CUDA, reason="CUDA graphs need a CUDA device; none here (run on the GPU machine)")
def test_cuda_graphs_match_eager(tiny_bert: Path) -> None:
    rows = _rows(40, seed=3)
    buckets = BucketSet.from_limits(16, 64, max_tokens=512)
    graphs = Engine.load(str(tiny_bert), buckets, EngineOptions(dtype="float16"), "cuda")
    graphs.capture()
    assert set(graphs.graphs) == set(buckets.pairs())
    eager = Engine.load(str(tiny_bert), buckets, EngineOptions(dtype="float16", cuda_graphs=False), "cuda")
    others = _rows(40, seed=4)
    a, a2 = graphs.embed_rows(rows), graphs.embed_rows(others)  # back to back: staging reuse is ordered
    b, b2 = eager.embed_rows(rows), eager.embed_rows(others)
    assert a.is_cuda
    torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(a2, b2, atol=2e-3, rtol=2e-3)
    np.testing.assert_allclose(a.cpu().numpy(), _reference(tiny_bert, rows, "mean"), atol=2e-2)
