"""Our tokenizer equals sentence-transformers' on real sentences; truncation sides and limits."""

from __future__ import annotations

import numpy as np
import pytest

from services.errors import InvalidInput, PayloadTooLarge
from services.registry import load_registry
from services.tokenizer import TextTokenizer

SPEC = load_registry().get("all-minilm-l6-v2")


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return TextTokenizer.for_model(SPEC)


def test_matches_sentence_transformers(tok: TextTokenizer) -> None:
    from sentence_transformers import SentenceTransformer

    from bench.corpus import sentences

    texts = [*sentences(200), "x " * 400, "", "émoji 🙂"]
    st = SentenceTransformer(str(SPEC.source_dir()), device="cpu")
    st.max_seq_length = SPEC.max_seq_length
    feats = st.tokenize(texts)
    ours = tok.encode(texts)
    for i, ids in enumerate(ours.ids):
        n = int(feats["attention_mask"][i].sum())
        assert ids.tolist() == feats["input_ids"][i][:n].tolist()
    assert ours.truncated[-3] and not any(ours.truncated[:200])


def test_truncation_sides(tok: TextTokenizer) -> None:
    long = " ".join(f"w{i}" for i in range(600))
    end, start = tok.encode([long], "end"), tok.encode([long], "start")
    assert end.lengths == start.lengths == [256]
    assert end.ids[0][1] != start.ids[0][1]
    with pytest.raises(PayloadTooLarge) as err:
        tok.encode(["ok", long], "none", field="inputs")
    assert err.value.field == "inputs[1]"


def test_token_id_inputs(tok: TextTokenizer) -> None:
    out = tok.from_ids([[101, 7592, 102], list(range(1000, 1300))])
    assert out.lengths == [3, 256] and out.truncated == [False, True]
    assert np.array_equal(tok.from_ids([list(range(1000, 1300))], "start").ids[0][-1], 1299)
    with pytest.raises(InvalidInput) as err:
        tok.from_ids([[1, 2], [-5]])
    assert err.value.field == "input[1]"
    with pytest.raises(InvalidInput):
        tok.from_ids([[tok.vocab_size]])
