"""trt_build.pooling against straightforward per-row references on left- and right-padded batches, in
torch and through the exported ONNX graph; and the sibling-file mechanism that ships it to Triton."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tests.unit.trt_build.tiny_bert import save_tiny_bert
from trt_build import model_files, pooling
from trt_build.export import INPUT_NAMES, OUTPUT_NAME, export_module

LENGTHS = (5, 1, 8, 3)
WIDTH = 8
TOKEN_POOLINGS = ("mean", "cls", "last-token")


def _mask(side: str, lengths: tuple[int, ...] = LENGTHS, width: int = WIDTH) -> torch.Tensor:
    mask = torch.zeros((len(lengths), width), dtype=torch.int64)
    for row, n in enumerate(lengths):
        mask[row, slice(width - n, width) if side == "left" else slice(0, n)] = 1
    return mask


def _reference(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """One row at a time over its real tokens only; `cls` is the first position, as BERT's pooler."""
    out = []
    for h, m in zip(hidden, mask, strict=True):
        real = h[m.bool()]
        out.append({"mean": real.mean(0), "cls": h[0], "last-token": real[-1]}[mode])
    return torch.stack(out)


def _vlm2vec_last(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """VLM2Vec's `_pooling` ('last'/'eos') as written there: the padding side read off the last column."""
    rows = torch.arange(hidden.shape[0])
    if mask[:, -1].sum() == mask.shape[0]:
        return hidden[rows, -1, :]
    return hidden[rows, mask.sum(dim=1) - 1]


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("mode", TOKEN_POOLINGS)
def test_token_pooling_matches_reference(mode: str, side: str) -> None:
    hidden = torch.randn(len(LENGTHS), WIDTH, 6, generator=torch.Generator().manual_seed(0))
    mask = _mask(side)
    got = pooling.pool(hidden, mask, mode)
    assert got.dtype == torch.float32 and got.shape == (len(LENGTHS), 6)
    torch.testing.assert_close(got, _reference(hidden, mask, mode))


@pytest.mark.parametrize("side", ["left", "right"])
def test_last_token_is_vlm2vecs_token(side: str) -> None:
    hidden = torch.randn(len(LENGTHS), WIDTH, 6, generator=torch.Generator().manual_seed(1))
    mask = _mask(side)
    torch.testing.assert_close(pooling.pool(hidden, mask, "last-token"), _vlm2vec_last(hidden, mask))


def test_half_precision_pools_in_fp32() -> None:
    hidden = torch.randn(len(LENGTHS), WIDTH, 6, generator=torch.Generator().manual_seed(2))
    mask = _mask("right")
    got = pooling.pool(hidden.to(torch.bfloat16), mask, "mean")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, _reference(hidden.to(torch.bfloat16).float(), mask, "mean"))


def test_all_padding_rows_do_not_move_the_last_token() -> None:
    """Bucket padding adds empty rows to a left-padded batch; VLM2Vec's batch-wide rule would then read
    it as right padding. The per-row rule keeps the real rows' last token."""
    mask = _mask("left", (5, 1, 8, 0))
    hidden = torch.randn(4, WIDTH, 6, generator=torch.Generator().manual_seed(3))
    got = pooling.pool(hidden, mask, "last-token")
    torch.testing.assert_close(got[:3], hidden[:3, -1])


def test_none_is_the_models_own_embedding() -> None:
    pooled, projected = torch.randn(2, 4), torch.randn(2, 3)
    clip = SimpleNamespace(image_embeds=projected, pooler_output=pooled, last_hidden_state=None)
    siglip = SimpleNamespace(pooler_output=pooled, last_hidden_state=None)
    assert pooling.embed(clip, None, "none") is projected
    assert pooling.embed(siglip, None, "none") is pooled
    with pytest.raises(ValueError, match="no pooled embedding"):
        pooling.embed(SimpleNamespace(last_hidden_state=None), None, "none")
    with pytest.raises(ValueError, match="needs the attention mask"):
        pooling.embed(siglip, None, "mean")
    with pytest.raises(ValueError, match="not a token pooling"):
        pooling.pool(torch.zeros(1, 1, 1), torch.ones(1, 1), "max")


def test_l2_normalize() -> None:
    vectors = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    torch.testing.assert_close(pooling.l2_normalize(vectors), torch.tensor([[0.6, 0.8], [0.0, 0.0]]))


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.mark.parametrize("mode", TOKEN_POOLINGS)
def test_exported_graph_pools_like_the_reference(tiny_bert: Path, mode: str, tmp_path: Path) -> None:
    """The module the build exports, run by ONNX Runtime on left- and right-padded batches, equals the
    reference pooling of the encoder's own hidden states for that batch."""
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(str(tiny_bert), attn_implementation="eager").eval()
    example = torch.ones((2, 8), dtype=torch.int64)
    path = tmp_path / "m.onnx"
    module = pooling.PooledEncoder(encoder, mode).eval()  # export restores the mode it found
    export_module(module, (example, example.clone()), INPUT_NAMES, OUTPUT_NAME, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for side in ("left", "right"):
        mask = _mask(side)
        ids = torch.randint(1, 100, mask.shape, generator=torch.Generator().manual_seed(4)) * mask
        (got,) = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
        with torch.no_grad():
            hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        want = _reference(hidden, mask, mode).numpy()
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"{side} padding")


def test_model_files_ship_their_relative_imports(tmp_path: Path) -> None:
    assert model_files.siblings("torch_cuda_model.py") == ["buckets.py", "pooling.py"]
    assert model_files.siblings("vlm_model.py") == ["buckets.py", "pooling.py"]
    assert model_files.siblings("python_model.py") == ["run_plan.py"]
    written = model_files.install_model("vlm_model.py", tmp_path / "1")
    assert sorted(p.name for p in written) == ["buckets.py", "model.py", "pooling.py"]
    assert (tmp_path / "1" / "pooling.py").read_text() == Path(pooling.__file__).read_text()


def test_pooling_imports_only_torch() -> None:
    """It runs in the Triton stub beside model.py, where the project is not importable."""
    tree = ast.parse(Path(pooling.__file__).read_text())
    top = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    top |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
    assert top <= {"__future__", "typing", "torch"}
