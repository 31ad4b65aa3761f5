"""The torch-cuda repository entry in the real tritonserver, with `device: cpu` (no GPU here): the stub
imports model.py and its sibling buckets.py, ragged requests merge, outputs leave through DLPack, and
every request gets its own rows back, equal to the engine run in-process. Graph capture needs CUDA and is
covered by tests/unit/trt_build/test_torch_target.py on a GPU machine."""

from __future__ import annotations

import asyncio
import os
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from services.config import get_settings
from services.encoders.triton import TritonEncoder
from services.registry import Batching, ModelSpec, load_registry
from services.triton_server import LocalTriton
from tests.unit.trt_build.tiny_bert import save_tiny_bert
from trt_build.buckets import merge_rows
from trt_build.torch_cuda_model import Engine, EngineOptions
from trt_build.torch_target import TorchCudaOptions, buckets_for, write_torch_cuda_entry

pytestmark = pytest.mark.integration
SPEC = (
    load_registry()
    .get("all-minilm-l6-v2")
    .model_copy(
        update={
            "name": "tiny-torch",
            "dimension": 32,
            "max_seq_length": 64,
            "engines": {},
            "batching": Batching(max_batch_size=16, max_batch_tokens=512),
        }
    )
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-hf"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny: Path) -> Iterator[LocalTriton]:
    work = tmp_path_factory.mktemp("torch-repo")
    settings = get_settings(data_dir=work / "data", model_repository=work / "repo")
    write_torch_cuda_entry(SPEC, settings.model_repository / SPEC.name, tiny, TorchCudaOptions(device="cpu"))
    triton = LocalTriton(settings, models=[SPEC.name])
    # The stub links the system libpython; stdlib extensions of this interpreter (ssl, which transformers
    # pulls in) need this interpreter's own, else "undefined symbol: _PyModule_Add" when versions differ.
    saved = os.environ.get("LD_LIBRARY_PATH")
    os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [sysconfig.get_config_var("LIBDIR"), saved]))
    try:
        triton.start()
    finally:
        if saved is None:
            os.environ.pop("LD_LIBRARY_PATH")
        else:
            os.environ["LD_LIBRARY_PATH"] = saved
    yield triton
    triton.stop()


def _batch(rows: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, width + 1, size=rows)
    lengths[0] = width
    mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
    return rng.integers(1, 100, size=(rows, width)) * mask, mask


async def test_entry_serves_merged_ragged_requests(server: LocalTriton, tiny: Path) -> None:
    spec: ModelSpec = SPEC
    engine = Engine.load(str(tiny), buckets_for(spec), EngineOptions(dtype="float32"), "cpu")
    batches = [_batch(1 + i % 5, 3 + 7 * i, seed=i) for i in range(9)]  # widths 3..59, up to 5 rows
    encoder = TritonEncoder(server.ports.grpc_url)
    try:
        got = await asyncio.gather(*(encoder.embed_tokens(spec.name, *b) for b in batches))
    finally:
        await encoder.close()
    for (ids, mask), out in zip(batches, got, strict=True):
        want = engine.embed_rows(merge_rows([(ids, mask)])[0]).numpy()
        assert out.shape == (ids.shape[0], spec.dimension)
        np.testing.assert_allclose(out, want, atol=1e-4, rtol=1e-4)


async def test_too_long_row_fails_only_its_request(server: LocalTriton) -> None:
    encoder = TritonEncoder(server.ports.grpc_url)
    try:
        ok, bad = await asyncio.gather(
            encoder.embed_tokens(SPEC.name, *_batch(2, 8, seed=1)),
            encoder.embed_tokens(SPEC.name, *_batch(1, 65, seed=2)),
            return_exceptions=True,
        )
    finally:
        await encoder.close()
    assert isinstance(ok, np.ndarray) and ok.shape == (2, 32)
    assert isinstance(bad, Exception) and "exceeds" in str(bad)
