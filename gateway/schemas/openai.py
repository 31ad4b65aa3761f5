"""OpenAI `/v1/embeddings` request shape (responses are built as plain dicts and serialized by orjson)."""

from __future__ import annotations

from typing import Literal, cast

from pydantic import BaseModel, ConfigDict, Field, field_validator


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

    @field_validator("input")
    @classmethod
    def _nothing_empty(cls, value: object) -> object:
        """An empty string or token list has nothing to embed (OpenAI refuses "" too): 400, not a vector of
        the model's special tokens alone."""
        if value == "" or (isinstance(value, list) and any(v == "" or v == [] for v in value)):
            raise ValueError("input must not contain an empty string or an empty token list")
        return value

    def parsed(self) -> tuple[list[str] | None, list[list[int]] | None]:
        """(texts, token ids): OpenAI's four input shapes told apart once, here."""
        raw = self.input
        if isinstance(raw, str):
            return [raw], None
        if raw and isinstance(raw[0], int):
            return None, [raw]
        if raw and isinstance(raw[0], list):
            return None, raw
        return cast(list[str], raw), None
