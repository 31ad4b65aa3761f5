"""OpenAI `/v1/embeddings` request shape (responses are built as plain dicts and serialized by orjson)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: str | list[str] | list[int] | list[list[int]] = Field(
        description="a string, a list of strings, or token ids (this model's vocabulary)"
    )
    model: str
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None
    # Extensions (pass with the openai client's `extra_body`): task template and truncation side.
    task: str | None = None
    truncate: Literal["end", "start", "none"] = "end"
