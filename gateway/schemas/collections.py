"""Collections, documents, search and job request shapes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from services import indexing

Weights = tuple[float, float]  # (dense, sparse)


class Document(BaseModel):
    """A document on the wire; `to_core()` is what the core indexes."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=256)
    text: str | None = None
    image: str | None = Field(None, description="base64 or data URI")
    video: str | None = Field(None, description="base64 or data URI")
    payload: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_content(self) -> Document:
        if sum(x is not None for x in (self.text, self.image, self.video)) != 1:
            raise ValueError("a document has exactly one of text, image, video")
        return self

    def to_core(self) -> indexing.Document:
        return indexing.Document(self.id, self.text, self.image, self.video, self.payload)


class CreateCollection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    model: str
    distance: Literal["cosine", "dot", "euclid", "manhattan"] = "cosine"
    dimensions: int | None = Field(None, ge=1)
    on_disk: bool = False
    quantization: Literal["none", "scalar", "binary"] = "none"
    query_log: bool = Field(False, description="keep a bounded sample of query texts to fit migrations")
    sparse: Literal["none", "bm25"] = Field(
        "none", description="bm25: keep a BM25 vector of every text document for sparse and hybrid search"
    )


class UpdateCollection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query_log: bool | None = Field(None, description="opt in or out; opting out forgets the kept texts")


class Documents(BaseModel):
    model_config = ConfigDict(extra="forbid")

    documents: list[Document] = Field(min_length=1)

    def to_core(self) -> list[indexing.Document]:
        return [d.to_core() for d in self.documents]


class DeleteDocuments(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[str] | None = None
    filter: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _something(self) -> DeleteDocuments:
        if not self.ids and not self.filter:
            raise ValueError("give ids, a filter, or both")
        return self


class Query(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str | None = None
    image: str | None = None
    video: str | None = None

    @model_validator(mode="after")
    def _one(self) -> Query:
        """Text, image or video; text may come with one of them (a composed query, e.g. a reference image
        and the change wanted)."""
        if (self.image is not None) + (self.video is not None) > 1 or (
            self.text is None and self.image is None and self.video is None
        ):
            raise ValueError("a query has text, image or video (text may come with an image or a video)")
        return self


class Rerank(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="a cross-encoder the gateway serves")
    top_n: int | None = Field(None, ge=1, le=1000, description="hits kept after reranking (default: all)")


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: Query
    task: str | None = None
    top_k: int = Field(10, ge=1, le=1000)
    filter: dict[str, Any] | None = None
    with_payload: bool = True
    score_threshold: float | None = None
    mode: Literal["dense", "sparse", "hybrid"] = Field(
        "dense", description="sparse and hybrid need a collection created with sparse: bm25"
    )
    fusion: Literal["rrf", "dbsf"] | None = Field(None, description="hybrid only; default rrf")
    weights: Weights | None = Field(None, description="hybrid rrf only: (dense, sparse) weights, each > 0")
    diversity: float | None = Field(
        None, ge=0.0, le=1.0, description="MMR: 0 = plain relevance order, 1 = most diverse (dense, hybrid)"
    )
    candidates: int | None = Field(
        None, ge=1, description="pool per stage for hybrid and diversity (at most search_max_candidates)"
    )
    rerank: Rerank | None = Field(None, description="reorder the top_k hits by a cross-encoder")

    # field validators (not one model validator) so an error names its field; they run in field order,
    # so `info.data` holds the fields above the one checked
    @field_validator("mode")
    @classmethod
    def _mode_needs_text(cls, mode: str, info: ValidationInfo) -> str:
        query = info.data.get("query")
        if mode != "dense" and query is not None and query.text is None:
            raise ValueError(f"mode {mode} needs query.text")
        return mode

    @field_validator("fusion")
    @classmethod
    def _fusion(cls, fusion: str | None, info: ValidationInfo) -> str | None:
        if fusion is not None and info.data.get("mode") != "hybrid":
            raise ValueError("only with mode hybrid")
        return fusion

    @field_validator("weights")
    @classmethod
    def _weights(cls, weights: Weights | None, info: ValidationInfo) -> Weights | None:
        if weights is None:
            return None
        if info.data.get("mode") != "hybrid" or info.data.get("fusion") == "dbsf":
            raise ValueError("only with mode hybrid and rrf fusion")
        if not all(0 < w < float("inf") for w in weights):
            raise ValueError("both weights must be finite and > 0")
        return weights

    @field_validator("diversity")
    @classmethod
    def _diversity(cls, diversity: float | None, info: ValidationInfo) -> float | None:
        if diversity is not None and info.data.get("mode") == "sparse":
            raise ValueError("not with mode sparse (MMR compares dense vectors)")
        return diversity

    @field_validator("rerank")
    @classmethod
    def _rerank(cls, rerank: Rerank | None, info: ValidationInfo) -> Rerank | None:
        top_k = info.data.get("top_k")
        if rerank is not None and rerank.top_n is not None and top_k is not None and rerank.top_n > top_k:
            raise ValueError("rerank.top_n must be at most top_k")
        return rerank


class BatchSearchItem(SearchRequest):
    collection: str


class BatchSearch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    searches: list[BatchSearchItem] = Field(min_length=1, max_length=256)


class ScrollRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    offset: str | None = None
    limit: int = Field(256, ge=1, le=1000)
    filter: dict[str, Any] | None = None
    with_payload: bool = True
    with_vectors: bool = False


class StartMigration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to_model: str
    compensator: str = "auto"
    sparse: Literal["none", "bm25"] | None = Field(
        None,
        description="the new layout's sparse vectors (default: as now); with the same to_model, a backfill",
    )
