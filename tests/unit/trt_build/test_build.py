"""trt_build: deterministic Triton configs (golden files, valid ModelConfig protobufs), profiles,
ONNX parity against sentence-transformers, idempotent builds, and the TensorRT skip path."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from services.batcher import pad_tokens
from services.config import get_settings
from services.registry import load_registry
from services.tokenizer import TextTokenizer
from tests.corpus import sentences
from tests.unit.trt_build.python_stub import load_python_model
from trt_build import engine
from trt_build.build import build
from trt_build.parity import MIN_COSINE, TextReference, check_parity, ort_run
from trt_build.profiles import text_profile, trtexec_shapes
from trt_build.run_plan import dearest_first, plan_runs, share_runs
from trt_build.triton_config import CpuOptions, cpu_config, gpu_config

GOLDEN = Path(__file__).with_name("golden")
SPEC = load_registry().get("all-minilm-l6-v2")


@pytest.mark.parametrize(
    ("kind", "render"),
    [
        ("cpu", lambda: cpu_config(SPEC, CpuOptions(instance_count=2, ort_threads=1))),
        ("tensorrt", lambda: gpu_config(SPEC, "tensorrt")),
        ("onnxruntime", lambda: gpu_config(SPEC, "onnxruntime")),
    ],
)
def test_config_matches_golden_and_parses(kind: str, render) -> None:  # type: ignore[no-untyped-def]
    text = render()
    assert text == render(), "generation must be deterministic"
    assert text == (GOLDEN / f"all-minilm-l6-v2.{kind}.pbtxt").read_text()
    cfg = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert cfg.max_batch_size == SPEC.batching.max_batch_size
    assert [i.name for i in cfg.input] == ["input_ids", "attention_mask"]
    assert list(cfg.output[0].dims) == [SPEC.dimension]


def test_cpu_and_gpu_share_the_io_signature() -> None:
    def io(text: str) -> list[tuple[str, int, list[int]]]:
        cfg = text_format.Parse(text, model_config_pb2.ModelConfig())
        return [(t.name, t.data_type, list(t.dims)) for t in [*cfg.input, *cfg.output]]

    assert (
        io(cpu_config(SPEC, CpuOptions()))
        == io(gpu_config(SPEC, "tensorrt"))
        == io(gpu_config(SPEC, "onnxruntime"))
    )


def test_profile_from_registry() -> None:
    p = text_profile(SPEC)
    assert p.min == (1, 1) and p.opt == (32, 64) and p.max == (64, 256)
    assert trtexec_shapes(p, ("input_ids",))[2] == "--maxShapes=input_ids:64x256"


def test_tensorrt_missing_is_a_clear_skip(tmp_path: Path) -> None:
    if engine.tensorrt_available():
        pytest.skip("tensorrt is installed here; the skip path does not apply")
    result = engine.build_engine(tmp_path / "m.onnx", tmp_path / "m.plan", text_profile(SPEC), ("input_ids",))
    assert not result.built and "tensorrt is not importable" in result.reason
    assert not (tmp_path / "m.plan").exists(), "never write a fake engine"


@pytest.fixture(scope="module")
def built() -> Path:
    settings = get_settings()
    build(load_registry(), SPEC.name, settings)
    return settings.model_repository / SPEC.engines["onnx"]


def test_onnx_parity_with_sentence_transformers(built: Path) -> None:
    report = check_parity("onnxruntime", ort_run(built), TextReference.load(SPEC, SPEC.source_dir()))
    assert report.min_cosine >= MIN_COSINE and report.max_abs_diff < 1e-4, str(report)


def test_build_is_idempotent(built: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = build(load_registry(), SPEC.name, get_settings())
    assert report.up_to_date and "nothing to do" in capsys.readouterr().out
    repo = get_settings().model_repository / SPEC.name
    assert (repo / "config.pbtxt").read_text() == cpu_config(SPEC, CpuOptions())
    assert (repo / SPEC.version / "model.py").exists()


def row_by_row(built: Path, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The reference vectors: each row alone through ORT, unpadded."""
    one = ort_run(built)
    return np.concatenate(
        [one(ids[i : i + 1, : mask[i].sum()], mask[i : i + 1, : mask[i].sum()]) for i in range(len(ids))]
    )


def test_engine_shares_a_batch_among_workers_with_the_rows_in_order(
    built: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two requests of sentences of every length, run by the entry's model.py: shared among two
    single-thread workers, on one two-thread session, and one row at a time, the same vectors."""
    root = get_settings().model_repository / SPEC.name
    tok = TextTokenizer.for_model(SPEC)
    texts = sentences(40)
    ids, mask = pad_tokens(tok.encode(texts).ids)
    requests = [
        {"input_ids": ids[:25], "attention_mask": mask[:25]},
        {"input_ids": ids[25:], "attention_mask": mask[25:]},
    ]
    shared = load_python_model(root, monkeypatch, {"intra_op_threads": "2"})
    assert shared.workers is not None
    whole = load_python_model(root, monkeypatch, {"intra_op_threads": "2", "share_runs": "0"})
    assert whole.workers is None
    alone = row_by_row(built, ids, mask)
    for model in (shared, whole):
        out = np.concatenate([r.output_tensors[0].array for r in model.execute(requests)])
        np.testing.assert_allclose(out, alone, atol=1e-5)
    shared.finalize()


def test_a_held_up_worker_leaves_the_rest_of_the_batch_to_the_other(
    built: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The workers pull runs from one queue: while one is held up in its first run (its core taken by
    another process), the other runs everything else. With shares fixed in advance the other would stop
    after its own share and the held one's first call would wait out its timeout."""
    root = get_settings().model_repository / SPEC.name
    ids, mask = pad_tokens(TextTokenizer.for_model(SPEC).encode(sentences(40)).ids)
    model = load_python_model(root, monkeypatch, {"intra_op_threads": "2"})
    max_rows = type(model).execute.__globals__["MAX_ROWS_PER_RUN"]  # model.py's own constant
    lengths = np.sort(mask.sum(axis=1))[::-1]
    runs = plan_runs(lengths, max_rows, model.max_tokens)
    total = len(dearest_first(share_runs(runs, lengths, 2), lengths))
    assert total >= 3
    calls: list[int] = []
    lock, released = threading.Lock(), threading.Event()
    run = model._run

    def held_first(feeds: dict[str, np.ndarray], session: object = None) -> np.ndarray:
        with lock:
            calls.append(threading.get_ident())
            k = len(calls)
        if k == 1:
            assert released.wait(10), "the other worker stopped before the queue was empty"
        out = run(feeds, session)
        if k == total:
            released.set()
        return out

    monkeypatch.setattr(model, "_run", held_first)
    (response,) = model.execute([{"input_ids": ids, "attention_mask": mask}])
    assert getattr(response, "error", None) is None
    assert calls.count(calls[0]) == 1 and len(calls) == total
    np.testing.assert_allclose(response.output_tensors[0].array, row_by_row(built, ids, mask), atol=1e-5)
    model.finalize()


def test_copy_weights_recopies_a_changed_file_of_the_same_size(tmp_path: Path) -> None:
    """A retrained model can keep every file's size (token ids in config.json): still copied."""
    import os

    from trt_build.model_files import copy_weights

    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    (src / "config.json").write_text('{"vocab_size": 563}')
    (src / "notes.txt").write_text("not an engine file")
    copy_weights(src, dest, ("config.json",))
    assert (dest / "config.json").read_text() == '{"vocab_size": 563}' and not (dest / "notes.txt").exists()
    copied = (dest / "config.json").stat().st_mtime
    (src / "config.json").write_text('{"vocab_size": 557}')
    os.utime(src / "config.json", (copied + 5, copied + 5))
    copy_weights(src, dest, ("config.json",))
    assert (dest / "config.json").read_text() == '{"vocab_size": 557}'
    os.utime(dest / "config.json", (copied + 10, copied + 10))  # unchanged source: not rewritten
    copy_weights(src, dest, ("config.json",))
    assert (dest / "config.json").stat().st_mtime == copied + 10
