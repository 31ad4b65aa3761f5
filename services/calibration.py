"""int8 / uint8 output ranges per model, calibrated once from a fixed sample and stored.

Scalar quantization needs each dimension's range over the model's embeddings (sentence-transformers'
`calibration_embeddings`). The ranges must never change once a caller has stored int8 vectors, so they are
computed once per (model version, dimensions, normalize) from a fixed sample: 512 first sentences of
Python's standard-library docstrings (services/registry/calibration.txt, real text no one here wrote),
embedded through the normal path on the backfill lane, and kept under `data_dir/calibration`, so every
restart and replica that shares the directory uses the same ranges. Binary encodings need no calibration.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

from services.config import PACKAGE_ROOT
from services.embedder import Embedder
from services.errors import InvalidInput
from services.registry import Kind
from services.vectors import QuantRanges, calibrate

SAMPLE = PACKAGE_ROOT / "services" / "registry" / "calibration.txt"


class Calibrations:
    def __init__(self, embedder: Embedder, root: Path) -> None:
        self.embedder = embedder
        self.root = root
        self._known: dict[str, QuantRanges] = {}
        self._lock = asyncio.Lock()

    async def ranges(self, model: str, dimensions: int | None, normalize: bool | None) -> QuantRanges:
        spec = self.embedder.spec(model)
        if spec.kind in (Kind.image_encoder, Kind.cross_encoder):
            raise InvalidInput(
                f"model {model} has no text calibration for int8/uint8", field="embedding_types"
            )
        norm = self.embedder.text_spec(model).normalize if normalize is None else normalize
        key = hashlib.sha256(json.dumps([spec.ref, dimensions, norm]).encode()).hexdigest()[:24]
        known = self._known.get(key)
        if known is not None:
            return known
        async with self._lock:  # one calibration at a time, and each only once
            if key in self._known:
                return self._known[key]
            path = self.root / f"{spec.name}-{key}.json"
            if path.exists():
                ranges = QuantRanges.from_dict(json.loads(path.read_text()))
            else:
                texts = [t for t in SAMPLE.read_text().splitlines() if t.strip()]
                out = await self.embedder.embed_texts(
                    model, texts, apply_template=False, dimensions=dimensions, normalize=norm, lane="backfill"
                )
                ranges = calibrate(out.vectors)
                self.root.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps({**ranges.to_dict(), "model": spec.ref, "texts": len(texts)}))
                tmp.replace(path)
            self._known[key] = ranges
            return ranges
