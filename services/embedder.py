"""The Embedder: the one way anything in the fleet embeds (gateway routes and workers alike).

Path: templates -> tokenizer -> cache -> batcher -> encoder (Triton) -> vectors. Template rendering,
tokenization and cache lookups are plain calls here, not extra services, so a request costs five hops.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from services import metrics
from services.batcher import Batcher, Runner, pad_tokens
from services.cache import EmbeddingCache, cache_key, fill_fresh, lookup, split_cached
from services.config import Settings
from services.encoders.base import Encoder
from services.errors import InvalidInput, NotFound, PayloadTooLarge
from services.media.images import decode_image, decode_inline
from services.media.video import decode_video
from services.registry import Kind, ModelSpec, Registry, Side
from services.templates import Template, resolve
from services.tokenizer import TextTokenizer, Tokenized, Truncate
from services.vectors import activate_scores, finish, l2_normalize
from services.vlm import RAW_TEXT, VlmModel, vlm_batching, vlm_media, vlm_template, vlm_texts

T = TypeVar("T")


TOKENIZE_OFF_LOOP = 8  # texts per request from which tokenizing moves to the tokenizer pool


@dataclass(frozen=True)
class _Counters:
    tokens: Any
    inputs: Any


@dataclass(frozen=True)
class Scored:
    scores: np.ndarray  # [documents] float32, activated unless raw scores were asked for
    tokens: list[int]  # per pair, after truncation
    truncated: list[bool]


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
        self._batchers: dict[str, Batcher[Any]] = {}
        self._vlm: dict[str, VlmModel] = {}
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self._bound: dict[str, _Counters] = {}
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

    def vlm_model(self, spec: ModelSpec) -> VlmModel:
        model = self._vlm.get(spec.name)
        if model is None:
            model = self._vlm[spec.name] = VlmModel(spec, self.settings)
        return model

    def batcher(self, spec: ModelSpec) -> Batcher[Any]:
        b = self._batchers.get(spec.name)
        if b is None and spec.kind is Kind.vlm:  # a row is an item: language-model tokens and vision patches
            b = self._batchers[spec.name] = self._new_batcher(
                spec, **vlm_batching(self.encoder, spec, self.settings)
            )
        if b is None:
            s = self.settings
            if spec.kind is Kind.image_encoder:

                async def run(rows: list[np.ndarray]) -> np.ndarray:
                    return await self.encoder.embed_pixels(spec.triton_name, np.stack(rows))

                cost, tokens = (lambda _row: 1), spec.batching.max_batch_size
            elif spec.kind is Kind.cross_encoder:  # a row is a pair: its ids over its segment ids

                async def run(rows: list[np.ndarray]) -> np.ndarray:
                    ids, mask = pad_tokens([r[0] for r in rows])
                    types, _ = pad_tokens([r[1] for r in rows])
                    return (await self.encoder.score_pairs(spec.triton_name, ids, mask, types))[:, None]

                cost, tokens = (
                    (lambda row: row.shape[1]),
                    min(spec.batching.max_batch_tokens, s.max_batch_tokens),
                )
            else:
                left = spec.padding_side == "left"

                async def run(rows: list[np.ndarray]) -> np.ndarray:
                    ids, mask = pad_tokens(rows, left=left)
                    return await self.encoder.embed_tokens(spec.triton_name, ids, mask)

                cost, tokens = len, min(spec.batching.max_batch_tokens, s.max_batch_tokens)
            b = self._batchers[spec.name] = self._new_batcher(spec, run, cost, tokens)
        return b

    def _new_batcher(
        self,
        spec: ModelSpec,
        run: Runner[Any],
        cost: Callable[[Any], int],
        tokens: int,
        **budgets: Any,  # patch_cost, max_batch_patches (vlm)
    ) -> Batcher[Any]:
        s = self.settings
        return Batcher(
            spec.name,
            run,
            max_batch_tokens=tokens,
            max_batch_size=min(spec.batching.max_batch_size, s.max_batch_size),
            max_wait_ms=s.max_wait_ms,
            max_queue=s.max_queue_inputs,
            inflight=spec.batching.inflight or s.inflight_batches,
            retry_after_s=s.retry_after_s,
            cost=cost,
            backfill_share=s.backfill_share,
            **budgets,
        )

    def saturated(self) -> bool:
        """Every online lane is at its admission limit: any embedding request would get 429."""
        batchers = self._batchers.values()
        return bool(batchers) and all(b.admitted["online"] >= b.max_queue for b in batchers)

    def text_spec(self, model: str) -> ModelSpec:
        """Dual-tower models embed text with their text tower."""
        spec = self.spec(model)
        if spec.kind is Kind.dual_tower:
            return self.registry.get(spec.towers["text"])
        if spec.kind is Kind.image_encoder:
            raise InvalidInput(f"model {model} embeds images only", field="model")
        if spec.kind is Kind.cross_encoder:
            raise InvalidInput(f"model {model} is a reranker: use /v1/rerank", field="model")
        return spec

    def check_payload(self, count: int, texts: Sequence[str | None] | None, field: str) -> None:
        """Per-request limits (the body-size limit is enforced by the HTTP layer before parsing). `texts`
        lines up with the inputs (None where an input has no text), so an error names the right one."""
        s = self.settings
        if count == 0:
            raise InvalidInput("at least one input is required", field=field)
        if count > s.max_inputs_per_request:
            raise PayloadTooLarge(
                f"{count} inputs, over the limit of {s.max_inputs_per_request} per request", field=field
            )
        for i, t in enumerate(texts or ()):
            if t is not None and len(t) > s.max_chars_per_input:
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
        if outer.kind is Kind.vlm:  # text-only items of a VLM (services/vlm.py)
            vlm = vlm_template(outer, task, side, instruction) if apply_template or instruction else RAW_TEXT
            out = await vlm_texts(self, outer, texts, vlm, dimensions, normalize, truncate, lane, field)
            return Embedded(out.vectors, out.tokens, out.truncated, vlm, out.cache_hits)
        spec = self.text_spec(model)
        self.check_dimensions(outer, dimensions)
        norm = spec.normalize if normalize is None else normalize
        n = len(token_ids if token_ids is not None else texts or [])
        with self.batcher(spec).admit(n, lane):  # 429 here, before any tokenizing or hashing
            tok = self.tokenizer(spec)
            template: Template | None = None
            if token_ids is not None:
                tokenized = tok.from_ids(token_ids, truncate, field)
                sources = (
                    ["ids:" + ",".join(map(str, t)) for t in tokenized.ids] if self.caching(lane) else []
                )
            else:
                assert texts is not None
                rendered = texts
                if apply_template or instruction is not None:
                    template = resolve(outer, task, side, instruction)
                    rendered = [template.render(text=t) for t in texts]
                tokenized = await self._tokenize(tok, rendered, truncate, field)
                sources = [f"{truncate}\x00{r}" for r in rendered] if self.caching(lane) else []
            vectors, hits = await self._vectors(spec, tokenized, sources, dimensions, norm, lane)
        self._counters(spec.name).inputs.inc(n)
        return Embedded(vectors, tokenized.lengths, tokenized.truncated, template, hits)

    def caching(self, lane: str) -> bool:
        """Only online requests read the cache; with none configured no key is even hashed."""
        return lane == "online" and self.cache.name != "none"

    async def _tokenize(
        self, tok: TextTokenizer, texts: list[str], truncate: Truncate, field: str
    ) -> Tokenized:
        """Inline for a few texts; beyond that on the tokenizer pool (the Rust tokenizer releases the GIL,
        so a 16-sentence batch stops holding the event loop for ~1 ms; for one sentence the thread
        hand-off would cost more than the ~45 us the encode takes, measured)."""
        if len(texts) < TOKENIZE_OFF_LOOP:
            return tok.encode(texts, truncate, field)
        return await self._off_loop(self._token_pool(), tok.encode, texts, truncate, field)

    async def _vectors(
        self,
        spec: ModelSpec,
        tokenized: Tokenized,
        sources: list[str],
        dimensions: int | None,
        norm: bool,
        lane: str,
    ) -> tuple[np.ndarray, int]:
        """The vectors of `tokenized` (cache hits where `sources` are given, the batcher for the rest)."""
        if not sources:  # no cache: the batcher's output, finished once, is the result (no further copy)
            raw = await self.batcher(spec).submit(tokenized.ids, lane=lane)
            self._counters(spec.name).tokens.inc(sum(tokenized.lengths))
            return finish(raw, dimensions, norm), 0
        keys = [cache_key(spec.ref, src, dimensions, norm) for src in sources]
        out, missing = await split_cached(self.cache, keys, dimensions or spec.dimension)
        if missing:
            raw = await self.batcher(spec).submit([tokenized.ids[i] for i in missing], lane=lane)
            await fill_fresh(self.cache, out, keys, missing, finish(raw, dimensions, norm))
            self._counters(spec.name).tokens.inc(sum(tokenized.lengths[i] for i in missing))
        return out, len(keys) - len(missing)

    async def score_pairs(
        self,
        model: str,
        query: str,
        documents: list[str],
        *,
        truncate: Truncate = "end",
        raw_scores: bool = False,
        lane: str = "online",
    ) -> Scored:
        """Relevance of each document to `query` by a cross-encoder, one pair per row through the same
        admission and token-budget batcher as embeddings (pairs are sorted by length and padded once)."""
        spec = self.spec(model)
        if spec.kind is not Kind.cross_encoder:
            raise InvalidInput(f"model {model} is not a reranker (cross-encoder)", field="model")
        batcher = self.batcher(spec)
        with batcher.admit(len(documents), lane):
            tok = self.tokenizer(spec)
            if len(documents) < TOKENIZE_OFF_LOOP:
                pairs = tok.encode_pairs(query, documents, truncate)
            else:
                pairs = await self._off_loop(self._token_pool(), tok.encode_pairs, query, documents, truncate)
            rows = [np.stack([i, t]) for i, t in zip(pairs.ids, pairs.type_ids, strict=True)]
            logits = (await batcher.submit(rows, lane=lane)).reshape(-1)
        self._counters(spec.name).tokens.inc(sum(pairs.lengths))
        scores = logits if raw_scores else activate_scores(logits, spec.activation)
        return Scored(scores, pairs.lengths, pairs.truncated)

    def image_spec(self, model: str, field: str) -> ModelSpec:
        """The image tower behind `model` (itself, or a dual-tower's image tower)."""
        spec = self.spec(model)
        if spec.kind is Kind.dual_tower:
            return self.registry.get(spec.towers["image"])
        if spec.kind is not Kind.image_encoder or spec.image is None:
            raise InvalidInput(f"model {model} does not embed images or video", field=field)
        return spec

    def _pool(self, name: str, workers: int) -> ThreadPoolExecutor:
        pool = self._pools.get(name)
        if pool is None:
            pool = self._pools[name] = ThreadPoolExecutor(workers, thread_name_prefix=name)
        return pool

    def _token_pool(self) -> ThreadPoolExecutor:
        return self._pool("tokenize", 1)

    def _media(self) -> ThreadPoolExecutor:
        return self._pool("media", self.settings.media_workers)

    async def _off_loop(self, pool: ThreadPoolExecutor, fn: Callable[..., T], *args: object) -> T:
        """CPU-heavy work (decode, resize, long tokenization) on a pool: never on the event loop."""
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    async def preprocess(self, fn: Callable[..., T], *args: object, inline: bool = False) -> T:
        """Decode, resize and patchify on the media pool (`media_workers` threads), or with `inline` here
        on the event loop: for small media (`decode_inline`) the hand-off costs about what the work does."""
        if inline:
            return fn(*args)
        return await self._off_loop(self._media(), fn, *args)

    def _counters(self, model: str) -> _Counters:
        """Metric children bound once per model (`labels()` takes a lock and a dict lookup per call)."""
        counters = self._bound.get(model)
        if counters is None:
            counters = self._bound[model] = _Counters(
                metrics.TOKENS.labels(model), metrics.INPUTS.labels(model, "text")
            )
        return counters

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
        task: str | None = None,
        side: Side = Side.document,
    ) -> MediaEmbedded:
        """An image, or a video as the mean of N uniformly sampled frames through the image tower; a VLM
        embeds either as one item under the (task, side) template."""
        outer = self.spec(model)
        if outer.kind is Kind.vlm:
            vlm = vlm_template(outer, task, side)
            out = await vlm_media(self, outer, kind, data, vlm, dimensions, normalize, lane, field)
            return MediaEmbedded(out.vectors[0], kind, out.timestamps[0])
        self.check_dimensions(outer, dimensions)
        spec = self.image_spec(model, field)
        assert spec.image is not None
        norm = spec.normalize if normalize is None else normalize
        rows = 1 if kind == "image" else spec.video_frames
        with self.batcher(spec).admit(rows, lane):  # 429 before any decoding
            key = cache_key(
                spec.ref, f"{kind}:{spec.video_frames}:" + hashlib.sha256(data).hexdigest(), dimensions, norm
            )
            caching = self.caching(lane) and kind == "image"
            cached = (await lookup(self.cache, [key]))[0] if caching else None
            if cached is not None:
                return MediaEmbedded(cached, kind)
            timestamps = None
            if kind == "image":
                inline = decode_inline([data], self.settings)
                pixels = [
                    await self.preprocess(decode_image, data, self.settings, spec.image, field, inline=inline)
                ]
            else:
                frames, timestamps = await self.preprocess(
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
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)
        await self.cache.close()
        await self.encoder.close()
