"""Native `/v1/embed` request shape: multimodal items, task templates, truncation control."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class InputItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str | None = None
    image: str | None = Field(None, description="base64, data URI, or an allowed http(s) URL")
    video: str | None = Field(None, description="base64, data URI, or an allowed http(s) URL")
    images: list[str] | None = Field(
        None, min_length=1, description="several images in one item, after `image` (vlm models)"
    )

    @model_validator(mode="after")
    def _not_empty(self) -> InputItem:
        if not self.text and self.image is None and self.video is None and not self.images:
            raise ValueError("an input needs at least one of text (not empty), image, images, video")
        return self


class EmbedRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    task: str | None = Field(None, description="template family or family.side, e.g. retrieval.query")
    instruction: str | None = Field(None, description="overrides the task template ({text} slot or a prefix)")
    inputs: list[InputItem] = Field(min_length=1)
    normalize: bool | None = None
    dimensions: int | None = Field(None, ge=1)
    truncate: Literal["end", "start", "none"] = "end"
    encoding_format: Literal["float", "base64"] = "float"
    embedding_types: list[Literal["float", "int8", "uint8", "binary", "ubinary"]] | None = Field(
        None,
        min_length=1,
        description="several encodings at once, under `embeddings`: int8/uint8 scalar-quantized with the "
        "model's stored calibration, binary/ubinary sign bits packed 8 per byte",
    )


class RerankDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str


class RerankRequest(BaseModel):
    """The shape rerank APIs share (Cohere, Jina, Infinity, TEI's `texts` aside): a query, documents as
    strings or `{text}` objects, `top_n`, `return_documents`."""

    model_config = ConfigDict(extra="forbid")

    model: str
    query: str = Field(min_length=1)
    documents: list[str | RerankDocument] = Field(min_length=1)
    top_n: int | None = Field(None, ge=1)
    return_documents: bool = False
    truncate: Literal["end", "start", "none"] = "end"
    raw_scores: bool = Field(False, description="the engine's logits instead of the model's activation")

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]
