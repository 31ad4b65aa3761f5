"""Cross-encoders (rerankers): one relevance score per (query, document) pair, exported to ONNX.

The graph takes the pair encoding (`input_ids`, `attention_mask`, `token_type_ids`, [n, seq] each) and
returns the classification head's raw logit per pair as `scores` [n]. The registry's `activation` is left
to the core (services.vectors.activate_scores), as L2 normalization is for encoders: one engine serves raw
and activated scores (TEI's `raw_scores`) and nothing is applied twice.

Weights come from a local Hugging Face folder (`path`, `python-package`, `split-zip`: what users deploy,
e.g. cross-encoder/ms-marco-MiniLM-L-6-v2) or, for tests, `random-init`: the real architecture with every
weight matrix re-drawn at std 1/sqrt(fan_in). HF's default init (std 0.02) makes a small model's score
nearly constant, so parity would pass even if the engine dropped the document.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from services.registry import ModelSpec
from trt_build.export import export_module
from trt_build.parity import PARITY_PAIRS, ScoreParity, compare_scores, ort_run, require
from trt_build.triton_config import PAIR_INPUTS, SCORES

if TYPE_CHECKING:
    import torch

SEED = 0
PairFeatures = tuple[np.ndarray, np.ndarray, np.ndarray]  # input_ids, attention_mask, token_type_ids


def redraw_weights(model: torch.nn.Module, seed: int = SEED) -> None:
    """Every matrix (linear layers, embeddings) ~ N(0, 1/fan_in); norms and biases keep HF's init."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim >= 2:
                draw = torch.randn(param.shape, generator=generator, dtype=torch.float32)
                param.copy_(draw / math.sqrt(param.shape[-1]))


def load_classifier(spec: ModelSpec, model_dir: Path | None) -> torch.nn.Module:
    """The transformers sequence classifier, eager attention (what the ONNX exporter traces)."""
    import transformers

    if spec.source.type == "random-init":
        arch = spec.source.architecture or ""
        cls = getattr(transformers, arch, None)
        if cls is None or not arch.endswith("ForSequenceClassification"):
            raise ValueError(f"{spec.name}: {arch!r} is not a transformers *ForSequenceClassification class")
        config = cls.config_class(**{"num_labels": 1, **spec.source.config})
        model = cls._from_config(config, attn_implementation="eager")
        redraw_weights(model)
    else:
        if model_dir is None:
            raise ValueError(f"{spec.name}: no model folder")
        model = transformers.AutoModelForSequenceClassification.from_pretrained(
            str(model_dir), attn_implementation="eager"
        )
    if model.config.num_labels != 1:
        raise ValueError(
            f"{spec.name}: a reranker has one label (one score per pair), not {model.config.num_labels}"
        )
    return model.eval()


def _scorer(model: torch.nn.Module) -> torch.nn.Module:
    """The classifier with the served signature: three token tensors in, [n] raw logits out."""
    import inspect

    import torch

    typed = "token_type_ids" in inspect.signature(model.forward).parameters

    class PairScorer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
        ) -> torch.Tensor:
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if typed:
                kwargs["token_type_ids"] = token_type_ids
            return self.model(**kwargs).logits[:, 0]

    return PairScorer().eval()


def export_scorer(model: torch.nn.Module, out_path: Path) -> dict[str, float]:
    import torch

    ids = torch.ones((2, 8), dtype=torch.int64)
    types = torch.zeros_like(ids)
    types[:, 4:] = 1
    return export_module(_scorer(model), (ids, ids.clone(), types), PAIR_INPUTS, SCORES, out_path)


def reference_features(
    spec: ModelSpec, tokenizer_dir: Path, pairs: tuple[tuple[str, str], ...] = PARITY_PAIRS
) -> PairFeatures:
    """transformers' own tokenizer on the pairs (one padded batch): parity isolates the engine."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    feats = tokenizer(
        [q for q, _ in pairs],
        [d for _, d in pairs],
        padding=True,
        truncation=spec.pair_truncation,
        max_length=spec.max_seq_length,
        return_tensors="np",
    )
    ids = feats["input_ids"].astype(np.int64)
    types = feats.get("token_type_ids")
    types = np.zeros_like(ids) if types is None else types.astype(np.int64)
    return ids, feats["attention_mask"].astype(np.int64), types


def torch_scores(model: torch.nn.Module, features: PairFeatures) -> np.ndarray:
    """transformers' forward: the reference the engine must match."""
    import torch

    with torch.no_grad():
        return _scorer(model)(*(torch.from_numpy(f) for f in features)).numpy()


def st_activation(model_dir: Path) -> str:
    """What sentence-transformers' CrossEncoder applies to this folder's one logit: what its config names
    (`sentence_transformers.activation_fn`, or the pre-v4 key), else sigmoid, its default for one label."""
    config = model_dir / "config.json"
    raw = json.loads(config.read_text()) if config.is_file() else {}
    name = (raw.get("sentence_transformers") or {}).get("activation_fn") or raw.get(
        "sbert_ce_default_activation_function"
    )
    if not name:
        return "sigmoid"
    return {"Identity": "none", "Sigmoid": "sigmoid"}.get(name.rsplit(".", 1)[-1], name)


def onnx_parity(spec: ModelSpec, model: torch.nn.Module, tokenizer_dir: Path, onnx_path: Path) -> ScoreParity:
    features = reference_features(spec, tokenizer_dir)
    return compare_scores("onnxruntime", ort_run(onnx_path)(*features), torch_scores(model, features))


def export_and_check(
    spec: ModelSpec, model_dir: Path, onnx_path: Path, say: Callable[[str], None] = print
) -> dict[str, object]:
    """Export `spec` to `onnx_path` and check it against transformers; raises when parity fails."""
    model = load_classifier(spec, model_dir)
    figures: dict[str, object] = dict(export_scorer(model, onnx_path))
    say(f"exported cross-encoder {onnx_path} ({figures['onnx_mb']:.1f} MB) in {figures['export_s']:.1f}s")
    parity = onnx_parity(spec, model, model_dir, onnx_path)
    figures["parity_onnx"] = {"max_abs_diff": parity.max_abs_diff, "score_std": parity.score_spread}
    require(spec.name, parity, say)
    expected = spec.activation if spec.source.type == "random-init" else st_activation(model_dir)
    if expected != spec.activation:
        say(
            f"warning: the registry applies activation {spec.activation!r} to scores; sentence-transformers' "
            f"CrossEncoder applies {expected!r} for this folder"
        )
    return figures
