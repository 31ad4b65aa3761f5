"""The real tritonserver serves the real MiniLM: parity with sentence-transformers and Triton metrics."""

from __future__ import annotations

import urllib.request

import numpy as np
import pytest

from services.batcher import pad_tokens
from services.cache import NoCache
from services.config import Settings
from services.embedder import Embedder
from services.encoders.triton import TritonEncoder
from services.registry import load_registry
from services.tokenizer import TextTokenizer
from services.triton_server import LocalTriton
from services.vectors import l2_normalize
from tests.corpus import sentences

pytestmark = pytest.mark.integration
MODEL = "all-minilm-l6-v2"


@pytest.fixture(scope="module")
def reference() -> tuple[list[str], np.ndarray]:
    from sentence_transformers import SentenceTransformer

    spec = load_registry().get(MODEL)
    texts = [*sentences(62), "x " * 300, ""]
    st = SentenceTransformer(str(spec.source_dir()), device="cpu")
    st.max_seq_length = spec.max_seq_length
    return texts, st.encode(texts, normalize_embeddings=True)


async def test_client_embeds_64_sentences_like_sentence_transformers(
    triton: LocalTriton, reference: tuple[list[str], np.ndarray]
) -> None:
    texts, want = reference
    spec = load_registry().get(MODEL)
    ids = TextTokenizer.for_model(spec).encode(texts).ids
    encoder = TritonEncoder(triton.ports.grpc_url)
    got = l2_normalize(await encoder.embed_tokens(MODEL, *pad_tokens(ids)))
    await encoder.close()
    assert got.shape == (64, 384)
    assert float((got * want).sum(1).min()) >= 0.9999


async def test_embedder_path_matches_and_triton_counts_inferences(
    triton: LocalTriton, settings: Settings, reference: tuple[list[str], np.ndarray]
) -> None:
    texts, want = reference
    embedder = Embedder(
        settings, load_registry(settings.registry_path), TritonEncoder(triton.ports.grpc_url), NoCache()
    )
    out = await embedder.embed_texts(MODEL, texts)
    singles = [await embedder.embed_texts(MODEL, [t]) for t in texts[:4]]
    await embedder.close()
    assert float((out.vectors * want).sum(1).min()) >= 0.9999
    assert np.allclose(np.stack([s.vectors[0] for s in singles]), out.vectors[:4], atol=1e-5)
    with urllib.request.urlopen(f"http://127.0.0.1:{triton.ports.metrics}/metrics") as r:
        text = r.read().decode()
    counts = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("nv_inference_count{") and f'model="{MODEL}"' in line
    ]
    assert counts and sum(counts) >= 64 + 4
