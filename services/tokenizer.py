"""Fast tokenization with the model's own `tokenizer.json`, no padding (the batcher pads per batch).

The MiniLM `tokenizer.json` ships with fixed padding/truncation at 128; we clear both and truncate at the
registry's `max_seq_length`, which is what sentence-transformers does. One tokenizer instance per
truncation side, since the `tokenizers` objects are configured by mutation and shared across tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from tokenizers import Tokenizer

from services.errors import ConfigError, InvalidInput, PayloadTooLarge
from services.registry import ModelSpec

Truncate = Literal["end", "start", "none"]


@dataclass(frozen=True)
class Tokenized:
    ids: list[np.ndarray]  # one int64 array per input, unpadded
    truncated: list[bool]

    @property
    def lengths(self) -> list[int]:
        return [len(i) for i in self.ids]


class TextTokenizer:
    def __init__(self, path: Path, max_length: int) -> None:
        if not path.exists():
            raise ConfigError(f"tokenizer file {path} does not exist")
        self.max_length = max_length
        self._by_side: dict[str, Tokenizer] = {}
        for side, direction in (("end", "right"), ("start", "left"), ("none", None)):
            tok = Tokenizer.from_file(str(path))
            tok.no_padding()
            if direction is None:
                tok.no_truncation()
            else:
                tok.enable_truncation(max_length, direction=direction)
            self._by_side[side] = tok
        self.vocab_size = self._by_side["end"].get_vocab_size()

    @classmethod
    def for_model(cls, spec: ModelSpec) -> TextTokenizer:
        if not spec.tokenizer:
            raise ConfigError(f"model {spec.name} has no tokenizer")
        return cls(spec.source_dir() / spec.tokenizer, spec.max_seq_length)

    def encode(self, texts: list[str], truncate: Truncate = "end", field: str = "input") -> Tokenized:
        encodings = self._by_side[truncate].encode_batch(texts)
        ids = [np.asarray(e.ids, dtype=np.int64) for e in encodings]
        if truncate == "none":
            for i, arr in enumerate(ids):
                if len(arr) > self.max_length:
                    raise PayloadTooLarge(
                        f"input {i} has {len(arr)} tokens, over the model's {self.max_length}; "
                        "send truncate='end' or 'start' to cut it",
                        field=f"{field}[{i}]",
                    )
            return Tokenized(ids, [False] * len(ids))
        return Tokenized(ids, [bool(e.overflowing) for e in encodings])

    def from_ids(
        self, token_lists: list[list[int]], truncate: Truncate = "end", field: str = "input"
    ) -> Tokenized:
        """Token-id inputs (OpenAI's list-of-ints form) are ids of *this* model's vocabulary, taken as they
        are: special tokens included by the caller (as vLLM does)."""
        out: list[np.ndarray] = []
        truncated: list[bool] = []
        for i, toks in enumerate(token_lists):
            arr = np.asarray(toks, dtype=np.int64)
            if arr.ndim != 1 or (arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size)):
                raise InvalidInput(
                    f"token ids must be integers in [0, {self.vocab_size})", field=f"{field}[{i}]"
                )
            if len(arr) > self.max_length:
                if truncate == "none":
                    raise PayloadTooLarge(
                        f"input {i} has {len(arr)} tokens, over {self.max_length}", field=f"{field}[{i}]"
                    )
                arr = arr[: self.max_length] if truncate == "end" else arr[-self.max_length :]
                truncated.append(True)
            else:
                truncated.append(False)
            out.append(arr)
        return Tokenized(out, truncated)

    def count(self, texts: list[str]) -> list[int]:
        return [len(e.ids) for e in self._by_side["end"].encode_batch(texts)]
