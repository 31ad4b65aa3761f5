"""The Embedder: the one way anything in the fleet embeds (gateway routes and workers alike).

Path: templates -> tokenizer -> cache -> batcher -> encoder (Triton) -> vectors. Template rendering,
tokenization and cache lookups are plain calls here, not extra services, so a request costs five hops.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from services import metrics
from services.batcher import Batcher, pad_tokens
from services.cache import EmbeddingCache, cache_key, lookup
from services.config import Settings
from services.encoders.base import Encoder
from services.errors import InvalidInput, NotFound, PayloadTooLarge
from services.media.images import decode_image
from services.media.video import decode_video
from services.registry import Kind, ModelSpec, Registry, Side
from services.templates import Template, resolve
from services.tokenizer import TextTokenizer, Truncate
from services.vectors import finish, l2_normalize

T = TypeVar("T")


@dataclass(frozen=True)
class MediaEmbedded:
    vector: np.ndarray  # [dim]
    kind: str  # image | video
    timestamps: list[float] | None = None  # video: the frames used, seconds from the start


@dataclass(frozen=True)
class Embedded:
    vectors: np.ndarray  # [n, dim] float32
    tokens: list[int]  # per input, after truncation
    truncated: list[bool]
    template: Template | None
    cache_hits: int


class Embedder:
    def __init__(
        self, settings: Settings, registry: Registry, encoder: Encoder, cache: EmbeddingCache
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.encoder = encoder
        self.cache = cache
        self._tokenizers: dict[str, TextTokenizer] = {}
        self._batchers: dict[str, Batcher] = {}
        self._media_pool: ThreadPoolExecutor | None = None
        self.served = registry.served(settings.models)

    def triton_models(self) -> list[str]:
        return self.registry.triton_models(self.settings.models)

    def spec(self, model: str, field: str = "model") -> ModelSpec:
        if model not in self.served:
            known = ", ".join(sorted(self.settings.models))
            raise NotFound(f"model {model!r} is not served here (served: {known})", field=field)
        return self.registry.get(model, field=field)

    def tokenizer(self, spec: ModelSpec) -> TextTokenizer:
        tok = self._tokenizers.get(spec.name)
        if tok is None:
            tok = self._tokenizers[spec.name] = TextTokenizer.for_model(spec)
        return tok

    def batcher(self, spec: ModelSpec) -> Batcher:
        b = self._batchers.get(spec.name)
        if b is None:
            s = self.settings
            if spec.kind is Kind.image_encoder:

                async def run(rows: list[np.ndarray]) -> np.ndarray:
                    return await self.encoder.embed_pixels(spec.triton_name, np.stack(rows))

                cost, tokens = (lambda _row: 1), spec.batching.max_batch_size
            else:
                left = spec.padding_side == "left"

                async def run(rows: list[np.ndarray]) -> np.ndarray:
                    ids, mask = pad_tokens(rows, left=left)
                    return await self.encoder.embed_tokens(spec.triton_name, ids, mask)

                cost, tokens = len, min(spec.batching.max_batch_tokens, s.max_batch_tokens)
            b = self._batchers[spec.name] = Batcher(
                spec.name,
                run,
                max_batch_tokens=tokens,
                max_batch_size=min(spec.batching.max_batch_size, s.max_batch_size),
                max_wait_ms=s.max_wait_ms,
                max_queue=s.max_queue_inputs,
                inflight=s.inflight_batches,
                retry_after_s=s.retry_after_s,
                cost=cost,
                backfill_share=s.backfill_share,
            )
        return b

    def text_spec(self, model: str) -> ModelSpec:
        """Dual-tower models embed text with their text tower."""
        spec = self.spec(model)
        if spec.kind is Kind.dual_tower:
            return self.registry.get(spec.towers["text"])
        if spec.kind is Kind.image_encoder:
            raise InvalidInput(f"model {model} embeds images only", field="model")
        return spec

    def check_payload(self, count: int, texts: list[str] | None, field: str) -> None:
        """Per-request limits (the body-size limit is enforced by the HTTP layer before parsing)."""
        s = self.settings
        if count == 0:
            raise InvalidInput("at least one input is required", field=field)
        if count > s.max_inputs_per_request:
            raise PayloadTooLarge(
                f"{count} inputs, over the limit of {s.max_inputs_per_request} per request", field=field
            )
        for i, t in enumerate(texts or ()):
            if len(t) > s.max_chars_per_input:
                raise PayloadTooLarge(
                    f"input has {len(t)} characters, over the limit of {s.max_chars_per_input}",
                    field=f"{field}[{i}]",
                )

    @staticmethod
    def check_dimensions(spec: ModelSpec, dimensions: int | None) -> None:
        if dimensions is not None and not spec.allows_dimensions(dimensions):
            allowed = sorted({spec.dimension, *spec.matryoshka_dims})
            raise InvalidInput(
                f"model {spec.name} supports dimensions {allowed}, not {dimensions}", field="dimensions"
            )

    async def embed_texts(
        self,
        model: str,
        texts: list[str] | None = None,
        token_ids: list[list[int]] | None = None,
        *,
        task: str | None = None,
        side: Side = Side.query,
        instruction: str | None = None,
        apply_template: bool = True,
        truncate: Truncate = "end",
        dimensions: int | None = None,
        normalize: bool | None = None,
        lane: str = "online",
        field: str = "input",
    ) -> Embedded:
        outer = self.spec(model)
        spec = self.text_spec(model)
        self.check_dimensions(outer, dimensions)
        norm = spec.normalize if normalize is None else normalize
        tok = self.tokenizer(spec)
        template: Template | None = None
        if token_ids is not None:
            tokenized = tok.from_ids(token_ids, truncate, field)
            keys = [
                cache_key(spec.ref, "ids:" + ",".join(map(str, t)), dimensions, norm) for t in tokenized.ids
            ]
        else:
            assert texts is not None
            if apply_template or instruction is not None:
                template = resolve(outer, task, side, instruction)
                rendered = [template.render(text=t) for t in texts]
            else:
                rendered = texts
            tokenized = tok.encode(rendered, truncate, field)
            keys = [cache_key(spec.ref, f"{truncate}\x00{r}", dimensions, norm) for r in rendered]
        n = len(keys)
        found = await lookup(self.cache, keys) if lane == "online" else [None] * n
        missing = [i for i, v in enumerate(found) if v is None]
        out = np.empty((n, dimensions or spec.dimension), dtype=np.float32)
        for i, v in enumerate(found):
            if v is not None:
                out[i] = v
        if missing:
            raw = await self.batcher(spec).submit([tokenized.ids[i] for i in missing], lane=lane)
            fresh = finish(raw, dimensions, norm)
            out[missing] = fresh
            await self.cache.set_many({keys[i]: fresh[j] for j, i in enumerate(missing)})
            metrics.TOKENS.labels(spec.name).inc(sum(tokenized.lengths[i] for i in missing))
        metrics.INPUTS.labels(spec.name, "text").inc(n)
        return Embedded(out, tokenized.lengths, tokenized.truncated, template, n - len(missing))

    def image_spec(self, model: str, field: str) -> ModelSpec:
        """The image tower behind `model` (itself, or a dual-tower's image tower)."""
        spec = self.spec(model)
        if spec.kind is Kind.dual_tower:
            return self.registry.get(spec.towers["image"])
        if spec.kind is not Kind.image_encoder or spec.image is None:
            raise InvalidInput(f"model {model} does not embed images or video", field=field)
        return spec

    async def _off_loop(self, fn: Callable[..., T], *args: object) -> T:
        """Decode/resize on the media pool: CPU-heavy work must not stall the event loop."""
        if self._media_pool is None:
            self._media_pool = ThreadPoolExecutor(self.settings.media_workers, thread_name_prefix="media")
        return await asyncio.get_running_loop().run_in_executor(self._media_pool, fn, *args)

    async def embed_media(
        self,
        model: str,
        kind: str,
        data: bytes,
        *,
        dimensions: int | None = None,
        normalize: bool | None = None,
        lane: str = "online",
        field: str = "inputs[0].image",
    ) -> MediaEmbedded:
        """An image, or a video as the mean of N uniformly sampled frames through the image tower."""
        self.check_dimensions(self.spec(model), dimensions)
        spec = self.image_spec(model, field)
        assert spec.image is not None
        norm = spec.normalize if normalize is None else normalize
        key = cache_key(
            spec.ref, f"{kind}:{spec.video_frames}:" + hashlib.sha256(data).hexdigest(), dimensions, norm
        )
        cached = (await lookup(self.cache, [key]))[0] if lane == "online" and kind == "image" else None
        if cached is not None:
            return MediaEmbedded(cached, kind)
        timestamps = None
        if kind == "image":
            pixels = [await self._off_loop(decode_image, data, self.settings, spec.image, field)]
        else:
            frames, timestamps = await self._off_loop(
                decode_video, data, self.settings, spec.video_frames, spec.image, field
            )
            pixels = list(frames)
        raw = await self.batcher(spec).submit(pixels, lane=lane)
        pooled = l2_normalize(raw).mean(axis=0, keepdims=True) if kind == "video" else raw
        vec = finish(pooled, dimensions, norm)[0]
        if kind == "image":
            await self.cache.set_many({key: vec})
        metrics.INPUTS.labels(spec.name, kind).inc()
        return MediaEmbedded(vec, kind, timestamps)

    def fusion_weights(self, model: str) -> tuple[float, float]:
        spec = self.spec(model)
        if spec.kind is not Kind.dual_tower or spec.fusion is None:
            raise InvalidInput(
                f"model {model} cannot embed text and image together in one item", field="inputs"
            )
        return spec.fusion.text_weight, spec.fusion.image_weight

    async def ready(self) -> dict[str, bool]:
        out = {}
        for name in self.triton_models():
            ok = await self.encoder.is_ready(self.registry.get(name).triton_name)
            metrics.ENCODER_UP.labels(name).set(1 if ok else 0)
            out[name] = ok
        return out

    async def close(self) -> None:
        for b in self._batchers.values():
            await b.close()
        if self._media_pool is not None:
            self._media_pool.shutdown(wait=False, cancel_futures=True)
        await self.cache.close()
        await self.encoder.close()
