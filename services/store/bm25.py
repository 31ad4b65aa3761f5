"""BM25 sparse vectors for sparse and hybrid search: ONE encoder for both backends.

The encoder is Qdrant Edge's built-in BM25 (`edge_shard.Bm25Encoder`: Unicode word tokenizer, English
stopwords dropped, Snowball stemmer, tokens hashed to u32 indices, so there is no vocabulary to keep),
computed here, by the caller, for Edge and for a Qdrant server alike: the same text gives the same
indices and values on both. A document vector carries BM25 term weights (k=1.2, b=0.75, avg_len=256);
a query vector weighs each distinct token 1.0. The collection's `bm25` sparse vector has the IDF
modifier, so the engine multiplies in the IDF at query time. Identifiers split on punctuation:
`ERR_4xx_TOKEN` is the tokens `err`, `4xx`, `token`; `parse_filter()` is `parse`, `filter`.
"""

from __future__ import annotations

from functools import cache

from services.errors import InvalidInput
from services.store.edge_shard import Bm25Encoder
from services.store.records import Sparse


@cache
def _encoder() -> Bm25Encoder:
    return Bm25Encoder()


def _text(text: object) -> str:
    if not isinstance(text, str):
        raise InvalidInput("BM25 needs text", field="text")
    return text


def bm25_document(text: str) -> Sparse:
    """The sparse vector to store with a document (`PointIn.sparse`) for its text."""
    return _encoder().document(_text(text))


def bm25_query(text: str) -> Sparse:
    """The sparse query vector (`VectorStore.search(sparse_query=...)`) for a query text. A text of
    stopwords only gives an empty vector, which matches nothing."""
    return _encoder().query(_text(text))
