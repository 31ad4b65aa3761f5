"""Parity of an exported engine against the sentence-transformers reference on fixed sentences."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.registry import ModelSpec

MIN_COSINE = 0.9999

# Fixed, varied-length sentences: short, long (truncated at max_seq_length), punctuation, unicode.
PARITY_SENTENCES: tuple[str, ...] = (
    "A man is eating food.",
    "The quick brown fox jumps over the lazy dog.",
    "Triton serves many models at once.",
    "How do I reset my password?",
    "Embeddings map text to vectors so that similar meanings land close together.",
    "Paris is the capital of France.",
    "Le chat est assis sur le tapis.",
    "数据库中的向量检索",
    "42",
    "",
    "def fibonacci(n): return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    " ".join(["a very long input that will be truncated by the tokenizer"] * 60),
    "Emoji are tokens too 🙂🚀",
    "Short.",
    "Return a new list containing all items from the iterable in ascending order.",
    "The mitochondria is the powerhouse of the cell.",
)


@dataclass(frozen=True)
class ParityReport:
    engine: str
    sentences: int
    max_abs_diff: float
    min_cosine: float

    @property
    def ok(self) -> bool:
        return self.min_cosine >= MIN_COSINE

    def __str__(self) -> str:
        verdict = "ok" if self.ok else f"FAILED (< {MIN_COSINE})"
        return (
            f"parity {self.engine}: {self.sentences} sentences, max |diff| {self.max_abs_diff:.2e}, "
            f"min cosine {self.min_cosine:.7f} {verdict}"
        )


def reference_embeddings(spec: ModelSpec, model_dir: Path, sentences: tuple[str, ...]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu")
    model.max_seq_length = spec.max_seq_length
    return np.asarray(model.encode(list(sentences), normalize_embeddings=True, batch_size=8))


def compare(engine: str, got: np.ndarray, want: np.ndarray) -> ParityReport:
    """Compare L2-normalized vectors: engines emit pooled vectors, normalization happens in the gateway."""
    got = got.astype(np.float64)
    want = want.astype(np.float64)
    got /= np.maximum(np.linalg.norm(got, axis=1, keepdims=True), 1e-12)
    want /= np.maximum(np.linalg.norm(want, axis=1, keepdims=True), 1e-12)
    cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    return ParityReport(engine, len(got), float(np.abs(got - want).max()), float(cos.min()))


def check_parity(
    engine: str,
    run: Callable[[np.ndarray, np.ndarray], np.ndarray],
    encode: Callable[[list[str]], tuple[np.ndarray, np.ndarray]],
    reference: np.ndarray,
    sentences: tuple[str, ...] = PARITY_SENTENCES,
) -> ParityReport:
    """Run `engine` on the tokenized sentences (one padded batch) and compare with the reference."""
    ids, mask = encode(list(sentences))
    return compare(engine, run(ids, mask), reference)
