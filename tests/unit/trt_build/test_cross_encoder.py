"""Cross-encoder (reranker) builds: deterministic Triton configs (golden, valid ModelConfig), export with
score parity against transformers' forward, idempotent `embedfleet build`, scores that depend on both
sides of the pair, the CPU python-backend model serving them, and a user's local Hugging Face folder
matching sentence-transformers' CrossEncoder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from services.config import Settings, get_settings
from services.registry import ModelSpec, Registry, load_registry
from services.tokenizer import TextTokenizer
from tests.unit.trt_build.python_stub import load_python_model
from trt_build import cross_encoder as ce
from trt_build.build import build
from trt_build.parity import MAX_SCORE_DIFF, PARITY_PAIRS
from trt_build.triton_config import PAIR_INPUTS, CpuOptions, cpu_config, gpu_config

GOLDEN = Path(__file__).with_name("golden")
REGISTRY = load_registry()
SPEC = REGISTRY.get("rerank-minilm-random")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def _settings(root: Path) -> Settings:
    return get_settings().model_copy(update={"model_repository": root / "repo", "data_dir": root / "var"})


def _parse(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def _render(target: str) -> str:
    if target == "cpu":
        return cpu_config(SPEC, CpuOptions(instance_count=2, ort_threads=1))
    return gpu_config(SPEC, target)


@pytest.mark.parametrize("kind", ["cpu", "tensorrt", "onnxruntime"])
def test_config_matches_golden_and_parses(kind: str) -> None:
    text = _render(kind)
    assert text == (GOLDEN / f"rerank-minilm-random.{kind}.pbtxt").read_text()
    cfg = _parse(text)
    assert [(i.name, list(i.dims)) for i in cfg.input] == [(n, [-1]) for n in PAIR_INPUTS]
    assert all(i.allow_ragged_batch == (kind == "cpu") for i in cfg.input)
    (out,) = cfg.output
    # the graph's [n] scores; Triton needs non-empty dims, so clients read [n, 1]
    assert (out.name, list(out.dims), list(out.reshape.shape)) == ("scores", [1], [])
    assert cfg.max_batch_size == SPEC.batching.max_batch_size


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, dict]:
    settings = _settings(tmp_path_factory.mktemp("rerank"))
    report = build(REGISTRY, SPEC.name, settings)
    return settings, report.figures


def test_build_checks_parity_and_is_idempotent(
    built: tuple[Settings, dict], capsys: pytest.CaptureFixture[str]
) -> None:
    settings, figures = built
    parity = figures["parity_onnx"]
    assert parity["max_abs_diff"] <= MAX_SCORE_DIFF and parity["score_std"] > 0.2, parity
    assert figures["trt_profile"] == {"min": [1, 1], "opt": [16, 64], "max": [32, 128]}
    again = build(REGISTRY, SPEC.name, settings)
    assert again.up_to_date and "nothing to do" in capsys.readouterr().out
    root = settings.model_repository / SPEC.name
    opts = CpuOptions(instance_count=settings.triton_instance_count, ort_threads=settings.triton_ort_threads)
    assert (root / "config.pbtxt").read_text() == cpu_config(SPEC, opts)
    assert (root / "1" / "model.py").exists() and (root / "1" / "model.onnx").exists()


def _engine_scores(settings: Settings, pairs: list[tuple[str, str]]) -> np.ndarray:
    """The built ONNX on our own tokenizer's pairs: the path the gateway takes."""
    tok = TextTokenizer.for_model(SPEC)
    features = tok.encode_pairs([q for q, _ in pairs], [d for _, d in pairs]).padded()
    session = ort.InferenceSession(str(settings.model_repository / SPEC.engines["onnx"]))
    return session.run(None, dict(zip(PAIR_INPUTS, features, strict=True)))[0]


def test_scores_depend_on_both_sides_and_match_transformers(built: tuple[Settings, dict]) -> None:
    settings, _ = built
    got = _engine_scores(settings, list(PARITY_PAIRS))
    features = ce.reference_features(SPEC, SPEC.source_dir())
    want = ce.torch_scores(ce.load_classifier(SPEC, None), features)
    assert got.shape == (len(PARITY_PAIRS),)
    np.testing.assert_allclose(got, want, atol=MAX_SCORE_DIFF, rtol=0)
    # pairs 0/1 share the query, 14/15 too; 2/3 differ in the document only, 6 has no query
    for a, b in ((0, 1), (2, 3), (14, 15)):
        assert abs(got[a] - got[b]) > 0.05, (a, b, got)
    swapped = _engine_scores(settings, [(d, q) for q, d in PARITY_PAIRS[:4]])
    assert np.abs(swapped - got[:4]).max() > 0.05, "query and document are not interchangeable"


def test_redrawn_weights_are_what_makes_the_check_meaningful() -> None:
    model = ce.load_classifier(SPEC, None)
    dense = model.bert.encoder.layer[0].intermediate.dense.weight.detach()
    assert float(dense.std()) == pytest.approx(1 / np.sqrt(dense.shape[1]), rel=0.05)
    features = ce.reference_features(SPEC, SPEC.source_dir())
    default_init = type(model)._from_config(model.config, attn_implementation="eager").eval()
    spread, default_spread = (float(ce.torch_scores(m, features).std()) for m in (model, default_init))
    assert spread > 20 * default_spread, (spread, default_spread)


def test_python_backend_model_serves_scores(
    built: tuple[Settings, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests of different widths merge, sort and split back in order; a malformed one fails alone."""
    settings, _ = built
    model = load_python_model(settings.model_repository / SPEC.name, monkeypatch)
    tok = TextTokenizer.for_model(SPEC)
    pairs = list(PARITY_PAIRS)
    ids, mask, types_ = tok.encode_pairs([q for q, _ in pairs], [d for _, d in pairs]).padded()
    want = _engine_scores(settings, pairs)
    short = {
        n: a[:5, : int(mask[:5].sum(1).max())] for n, a in zip(PAIR_INPUTS, (ids, mask, types_), strict=True)
    }
    rest = {n: a[5:] for n, a in zip(PAIR_INPUTS, (ids, mask, types_), strict=True)}
    bad = {**short, "token_type_ids": short["token_type_ids"][:, :2]}
    ok1, broken, ok2 = model.execute([short, bad, rest])
    (scores,) = ok1.output_tensors
    assert scores.name == "scores" and scores.array.shape == (5, 1)
    np.testing.assert_allclose(scores.array[:, 0], want[:5], atol=1e-5)
    np.testing.assert_allclose(ok2.output_tensors[0].array[:, 0], want[5:], atol=1e-5)
    assert broken.output_tensors == [] and "one shape" in broken.error


def _user_folder(path: Path) -> Path:
    """What a user deploys: a Hugging Face cross-encoder folder (random weights, MiniLM's tokenizer),
    whose config names sentence-transformers' activation, as ms-marco-MiniLM-L-6-v2's names identity."""
    small = SPEC.model_copy(
        update={
            "source": SPEC.source.model_copy(update={"config": {**SPEC.source.config, "hidden_size": 32}})
        }
    )
    ce.load_classifier(small, None).save_pretrained(path)
    for name in TOKENIZER_FILES:
        shutil.copyfile(SPEC.source_dir() / name, path / name)
    config = json.loads((path / "config.json").read_text())
    config["sentence_transformers"] = {"activation_fn": "torch.nn.modules.activation.Sigmoid"}
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_local_folder_builds_and_matches_cross_encoder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sentence_transformers import CrossEncoder
    from torch.nn import Identity

    folder = _user_folder(tmp_path / "my-reranker")
    spec = ModelSpec(
        name="my-reranker",
        modality="text",
        kind="cross-encoder",
        source={"type": "path", "path": str(folder)},
        max_seq_length=64,
    )
    settings = _settings(tmp_path)
    report = build(Registry(models=[spec]), spec.name, settings)
    assert report.figures["parity_onnx"]["max_abs_diff"] <= MAX_SCORE_DIFF
    assert "CrossEncoder applies 'sigmoid' for this folder" in capsys.readouterr().out  # registry: none
    reranker = CrossEncoder(str(folder), device="cpu", max_length=spec.max_seq_length)
    want = reranker.predict(list(PARITY_PAIRS), activation_fn=Identity(), batch_size=64)
    features = ce.reference_features(spec, folder)
    session = ort.InferenceSession(str(settings.model_repository / "my-reranker" / "1" / "model.onnx"))
    got = session.run(None, dict(zip(PAIR_INPUTS, features, strict=True)))[0]
    np.testing.assert_allclose(got, want, atol=MAX_SCORE_DIFF, rtol=0)


def test_torch_cuda_target_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cpu or gpu"):
        build(REGISTRY, SPEC.name, _settings(tmp_path), target="torch-cuda")


@pytest.mark.parametrize(
    ("config", "want"),
    [
        ({}, "sigmoid"),  # CrossEncoder's default for one label
        ({"sbert_ce_default_activation_function": "torch.nn.modules.linear.Identity"}, "none"),  # ms-marco
        ({"sentence_transformers": {"activation_fn": "torch.nn.modules.activation.Sigmoid"}}, "sigmoid"),
    ],
)
def test_activation_sentence_transformers_would_apply(tmp_path: Path, config: dict, want: str) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"num_labels": 1, **config}))
    assert ce.st_activation(tmp_path) == want
