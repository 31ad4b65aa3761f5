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

    from tests.corpus import sentences

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


RERANK = load_registry().get("rerank-minilm-random")
PAIRS = [
    ("what do people eat?", "A man is eating food."),
    ("capital", " ".join(f"paris{i}" for i in range(60))),  # a long document: cut
    ("émoji 🙂", ""),  # an empty document is still a pair: [CLS] q [SEP] [SEP]
    ("", "only a document"),
    ("how to sort", "sorted(iterable) returns a new list"),
]
LONG_QUERY = (" ".join(f"query{i}" for i in range(40)), " ".join(f"doc{i}" for i in range(40)))


@pytest.mark.parametrize("strategy", ["longest_first", "only_second"])
def test_pairs_match_transformers(strategy: str) -> None:
    """Our `tokenizers` pair encoding equals transformers' tokenizer(queries, documents, truncation=...)."""
    from transformers import AutoTokenizer

    pairs = PAIRS + [LONG_QUERY] * (strategy == "longest_first")  # only_second cannot cut a long query
    queries, documents = [q for q, _ in pairs], [d for _, d in pairs]
    ours = TextTokenizer(RERANK.source_dir() / "tokenizer.json", 32, strategy).encode_pairs(
        queries, documents
    )
    hf = AutoTokenizer.from_pretrained(str(RERANK.source_dir()))
    want = hf(queries, documents, truncation=strategy, max_length=32)
    full = hf(queries, documents)
    assert [i.tolist() for i in ours.ids] == want["input_ids"]
    assert [t.tolist() for t in ours.type_ids] == want["token_type_ids"]
    assert ours.truncated == [len(ids) > 32 for ids in full["input_ids"]]
    assert ours.truncated[1] and not ours.truncated[0]


def test_pairs_padded_and_limits() -> None:
    tok = TextTokenizer.for_model(RERANK)
    pairs = tok.encode_pairs("q", ["a", "b c"])  # one query for every document
    ids, mask, types = pairs.padded()
    assert ids.shape == mask.shape == types.shape == (2, 6) and pairs.lengths == [5, 6]
    assert ids[0].tolist() == [101, 1053, 102, 1037, 102, 0] and mask[0].tolist() == [1, 1, 1, 1, 1, 0]
    assert types.tolist() == [[0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 1, 1]]
    long = " ".join(f"w{i}" for i in range(300))
    assert tok.encode_pairs("q", [long]).lengths == [RERANK.max_seq_length]
    with pytest.raises(PayloadTooLarge) as err:
        tok.encode_pairs("q", ["ok", long], "none")
    assert err.value.field == "documents[1]"
    with pytest.raises(InvalidInput) as err:
        tok.encode_pairs(["a", "b"], ["x"])
    assert err.value.field == "query"
    strict = TextTokenizer(RERANK.source_dir() / "tokenizer.json", 16, "only_second")
    with pytest.raises(PayloadTooLarge) as err:
        strict.encode_pairs(long, ["document"])
    assert err.value.field == "query"
    assert strict.encode(["plain single text"]).lengths == [5]  # the strategy leaves single texts alone
