"""Collections, documents, search and job request shapes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services import indexing


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
        if sum(x is not None for x in (self.text, self.image, self.video)) != 1:
            raise ValueError("a query has exactly one of text, image, video")
        return self


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: Query
    task: str | None = None
    top_k: int = Field(10, ge=1, le=1000)
    filter: dict[str, Any] | None = None
    with_payload: bool = True
    score_threshold: float | None = None


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
