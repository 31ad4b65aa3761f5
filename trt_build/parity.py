"""Parity of an exported engine against its reference on fixed inputs: sentence-transformers embeddings
(cosine) for encoders, transformers' own forward on (query, document) pairs (absolute score) for rerankers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.registry import ModelSpec

MIN_COSINE = 0.9999
TokenRunner = Callable[..., np.ndarray]  # token arrays (ids, mask[, token types]) -> one output per row

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


# Cross-encoder pairs: a relevant and an irrelevant document per query, empty sides, a long document cut
# by truncation, two long sides cut together ('longest_first'), unicode, and the same document under
# two queries (a score that ignored either side would show).
_LONG = PARITY_SENTENCES[11]
PARITY_PAIRS: tuple[tuple[str, str], ...] = (
    ("What do people eat?", PARITY_SENTENCES[0]),
    ("What do people eat?", PARITY_SENTENCES[15]),
    ("capital of France", PARITY_SENTENCES[5]),
    ("capital of France", PARITY_SENTENCES[6]),
    ("How do I reset my password?", "Open settings, choose security and click 'reset password'."),
    ("How do I reset my password?", ""),
    ("", PARITY_SENTENCES[1]),
    ("vector search", PARITY_SENTENCES[7]),
    ("recursive fibonacci in python", PARITY_SENTENCES[10]),
    ("what is truncated?", _LONG),
    (_LONG, "a short document"),
    (_LONG, " ".join(reversed(_LONG.split()))),
    ("emoji 🚀", PARITY_SENTENCES[12]),
    ("42", PARITY_SENTENCES[8]),
    ("sort a list", PARITY_SENTENCES[14]),
    ("sort a list", PARITY_SENTENCES[4]),
)
MAX_SCORE_DIFF = 1e-5  # absolute, on raw logits


@dataclass(frozen=True)
class ScoreParity:
    engine: str
    pairs: int
    max_abs_diff: float
    score_spread: float  # std of the reference scores: near 0 would make the check meaningless

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= MAX_SCORE_DIFF

    def __str__(self) -> str:
        verdict = "ok" if self.ok else f"FAILED (> {MAX_SCORE_DIFF:.0e})"
        return (
            f"score parity {self.engine}: {self.pairs} pairs, max |diff| {self.max_abs_diff:.2e} "
            f"(reference score std {self.score_spread:.3f}) {verdict}"
        )


def compare_scores(engine: str, got: np.ndarray, want: np.ndarray) -> ScoreParity:
    got, want = got.astype(np.float64).reshape(-1), want.astype(np.float64).reshape(-1)
    if got.shape != want.shape:
        raise ValueError(f"{engine}: {got.shape[0]} scores for {want.shape[0]} pairs")
    return ScoreParity(engine, len(want), float(np.abs(got - want).max()), float(want.std()))


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


@dataclass(frozen=True)
class TextReference:
    """sentence-transformers on the parity sentences: its own tokenization as one padded batch (what an
    engine runs, so parity isolates the engine from our tokenizer) and its embeddings."""

    ids: np.ndarray
    mask: np.ndarray
    embeddings: np.ndarray

    @classmethod
    def load(
        cls, spec: ModelSpec, model_dir: Path, sentences: tuple[str, ...] = PARITY_SENTENCES
    ) -> TextReference:
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(model_dir), device="cpu")
        model.max_seq_length = spec.max_seq_length
        features = model.tokenize(list(sentences))
        embeddings = model.encode(list(sentences), normalize_embeddings=True, batch_size=8)
        return cls(features["input_ids"].numpy(), features["attention_mask"].numpy(), np.asarray(embeddings))


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """float64 rows scaled to unit length by trt_build.pooling's normalization."""
    import torch

    from trt_build.pooling import l2_normalize

    return l2_normalize(torch.from_numpy(np.asarray(vectors, dtype=np.float64))).numpy()


def compare(engine: str, got: np.ndarray, want: np.ndarray) -> ParityReport:
    """Compare directions: engines emit pooled vectors, normalization happens in the gateway."""
    got, want = unit_rows(got), unit_rows(want)
    return ParityReport(engine, len(got), float(np.abs(got - want).max()), float((got * want).sum(1).min()))


def check_parity(engine: str, run: TokenRunner, reference: TextReference) -> ParityReport:
    """Run `engine` on the reference's token batch and compare with the reference's embeddings."""
    return compare(engine, run(reference.ids, reference.mask), reference.embeddings)


def ort_run(onnx_path: Path, threads: int = 2) -> TokenRunner:
    """ONNX Runtime on CPU, the graph's inputs in order: the engine the cpu target serves."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(*arrays: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, dict(zip(names, arrays, strict=True)))[0])

    return run


def require(model: str, result: ParityReport | ScoreParity, say: Callable[[str], None]) -> None:
    """Say the parity line; a failed check raises, so a build stops before it writes the entry."""
    say(str(result))
    if not result.ok:
        raise RuntimeError(f"{model}: {result}")
