"""Items for `vlm` models (a Qwen2-VL-family backbone as a VLM2Vec embedder): prompt, pixels, batch.

Per item: the template is rendered with VLM2Vec's prompt assembly (`render_prompt`), tokenized with the
model folder's tokenizer.json, its images and video decoded under the media limits and preprocessed in
numpy (services/media/qwen2vl.py, golden-tested equal to the HF processor), placeholders expanded and the
3-D M-RoPE positions computed; all of that runs on the media pool, never on the event loop. The
prepared item is one batcher row, costed twice: language-model tokens (text + visual, padded like text
rows) and vision patches (summed), each under its own budget from the registry (`batching`); an item
that alone exceeds one is refused with 413 naming its field. The cache key covers the rendered prompt,
every media file's hash and the preprocessing contract, so a change of pixel limits never serves a
stale vector.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
from tokenizers import Tokenizer

from services import metrics
from services.batcher import Batcher
from services.cache import EmbeddingCache, cache_key, fill_fresh, split_cached
from services.config import Settings
from services.encoders.base import Encoder
from services.errors import ConfigError, EmbedfleetError, InvalidInput, PayloadTooLarge
from services.media.images import decode_inline, open_image
from services.media.qwen2vl import (
    PreparedItem,
    QwenVLConfig,
    Visual,
    config_from_hf,
    prepare_image,
    prepare_item,
    prepare_video,
    qwen3_video_prompt,
)
from services.media.video import RateSampling, decode_frames
from services.registry import ModelSpec, Side
from services.templates import SLOT, Template, resolve
from services.tokenizer import Truncate
from services.vectors import finish

T = TypeVar("T")
# the longest text (all items of a request) prepared on the event loop: ~1,000 tokens, well under 1 ms
INLINE_TEXT_CHARS = 4096


@dataclass(frozen=True)
class VlmItem:
    """One item's parts, media already fetched; the fields name where errors point."""

    text: str | None = None
    images: tuple[bytes, ...] = ()
    video: bytes | None = None
    field: str = "inputs[0]"
    image_fields: tuple[str, ...] = ()  # default: `field`.image, or `field`.images[k] for several

    def image_field(self, k: int) -> str:
        if k < len(self.image_fields):
            return self.image_fields[k]
        return f"{self.field}.image" if len(self.images) == 1 else f"{self.field}.images[{k}]"

    @property
    def kind(self) -> str:
        media = "image" if self.images else "video" if self.video is not None else ""
        if self.images and self.video is not None:
            media = "image+video"
        return "+".join(p for p in ("text" if self.text else "", media) if p) or "text"


@dataclass(frozen=True)
class Prepared:
    item: PreparedItem  # the batcher row
    truncated: bool
    timestamps: list[float] | None  # video: the frames used


@dataclass(frozen=True)
class VlmEmbedded:
    vectors: np.ndarray  # [n, dim]
    tokens: list[int]  # language-model tokens per item (text + visual); 0 for a cache hit
    truncated: list[bool]
    timestamps: list[list[float] | None]
    prompts: list[str]
    cache_hits: int


RAW_TEXT = Template("raw", "{text}")  # texts sent as they are (apply_template=False)


class Embedder(Protocol):
    """What the VLM path uses of services.embedder.Embedder (which imports this module)."""

    cache: EmbeddingCache

    def check_dimensions(self, spec: ModelSpec, dimensions: int | None) -> None: ...

    def vlm_model(self, spec: ModelSpec) -> VlmModel: ...

    def batcher(self, spec: ModelSpec) -> Batcher[Any]: ...

    def caching(self, lane: str) -> bool: ...

    async def preprocess(self, fn: Callable[..., T], *args: object) -> T: ...


def vlm_template(spec: ModelSpec, task: str | None, side: Side, instruction: str | None = None) -> Template:
    """The registry's template, or the caller's instruction taken verbatim: VLM2Vec appends the text and
    prepends the placeholders itself (`render_prompt`), so an instruction needs no slots."""
    if instruction is not None:
        return Template("instruction", instruction)
    return resolve(spec, task, side)


def render_prompt(
    template: str, text: str | None, images: int, video: bool, image_token: str, video_token: str
) -> str:
    """A template's slots filled, then VLM2Vec's `process_input_text` for what it has no slot for:
    `prompt = instruction (+ " " + text)`, then `video_token + " " + prompt`, then `image_token + " " +
    prompt` (several images: their tokens joined by spaces). So an instruction alone gives
    `"<|image_pad|> {instruction} {text}"`, and the registry's V2-eval strings (`{image}\\n...\\n`) render
    byte for byte; a `{image}` slot with no image renders empty."""
    image_run = " ".join([image_token] * images)
    slots = set(SLOT.findall(template))
    prompt = Template("", template).render(
        text=text or "", image=image_run, video=video_token if video else ""
    )
    if text and "text" not in slots:
        prompt = f"{prompt} {text}"
    if video and "video" not in slots:
        prompt = f"{video_token} {prompt}"
    if images and "image" not in slots:
        prompt = f"{image_run} {prompt}"
    return prompt


CHAT_INSTRUCTION = "Represent the user's input."  # Qwen3-VL-Embedding's instruction when none is given
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
CHAT_TAIL = "<|im_end|>\n<|im_start|>assistant\n"  # the user turn's end and the generation prompt


def chat_prompt(
    instruction: str, text: str | None, images: int, video: bool, image_token: str, video_token: str
) -> str:
    """Qwen3-VL-Embedding's published input (`Qwen3VLEmbedder.format_model_input`, then the Qwen3-VL chat
    template with the generation prompt): the instruction as the system turn, stripped and given a final
    period unless it ends in punctuation (the default when empty); the user turn holds the video, then the
    images, then the text, each visual as `<|vision_start|>placeholder<|vision_end|>`, "NULL" when the
    item is empty. The last token is the assistant turn's newline: the pooled one."""
    instruction = instruction.strip()
    if instruction and not unicodedata.category(instruction[-1]).startswith("P"):
        instruction += "."
    parts = [VISION_START + video_token + VISION_END] if video else []
    parts += [VISION_START + image_token + VISION_END] * images
    if text:
        parts.append(text)
    system = f"<|im_start|>system\n{instruction or CHAT_INSTRUCTION}<|im_end|>\n"
    return f"{system}<|im_start|>user\n{''.join(parts) or 'NULL'}{CHAT_TAIL}"


def _read_json(spec: ModelSpec, name: str) -> dict:
    path = spec.model_file(name)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model {spec.name}: cannot read {path}: {exc}") from exc


class VlmModel:
    """One served vlm model: preprocessing contract, tokenizer and placeholder tokens, checked at load."""

    def __init__(self, spec: ModelSpec, settings: Settings) -> None:
        self.spec = spec
        self.settings = settings
        opts = spec.vlm_options
        try:
            self.cfg: QwenVLConfig = config_from_hf(
                _read_json(spec, "preprocessor_config.json"),
                _read_json(spec, "config.json"),
                frames=spec.video_frames,
                **opts.overrides(),
            )
        except ValueError as exc:
            raise ConfigError(f"model {spec.name}: {exc}") from exc
        if self.cfg.family != opts.family:
            raise ConfigError(
                f"model {spec.name}: the registry says {opts.family}, the folder {self.cfg.family}"
            )
        assert spec.tokenizer is not None and spec.image_placeholder is not None  # registry-validated
        self.tokenizer = Tokenizer.from_file(str(spec.model_file(spec.tokenizer)))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.image_token = spec.image_placeholder
        self.video_token = spec.video_placeholder or ""
        for token, want in (
            (self.image_token, self.cfg.image_token_id),
            (self.video_token, self.cfg.video_token_id),
        ):
            if token and self.tokenizer.token_to_id(token) != want:
                raise ConfigError(
                    f"model {spec.name}: placeholder {token!r} is not token {want} of config.json"
                )
        self.frame_rate = None if opts.fps is None else RateSampling(opts.fps, opts.min_frames)
        # what decides the pixels besides the bytes: part of every cache key
        contract = [asdict(self.cfg), opts.fps, opts.min_frames]
        self.fingerprint = hashlib.sha256(json.dumps(contract, sort_keys=True).encode()).hexdigest()[:16]

    def prompt(self, template: Template, item: VlmItem) -> str:
        if len(item.images) > self.spec.vlm_options.max_images:
            raise PayloadTooLarge(
                f"{len(item.images)} images in one item; the model takes at most "
                f"{self.spec.vlm_options.max_images}",
                field=f"{item.field}.images",
            )
        if item.video is not None and not self.video_token:
            raise InvalidInput(f"model {self.spec.name} takes no video", field=f"{item.field}.video")
        if self.spec.vlm_options.prompt == "chat":  # raw texts too: the model reads nothing but its chat form
            return chat_prompt(
                "" if template is RAW_TEXT else template.template,
                item.text,
                len(item.images),
                item.video is not None,
                self.image_token,
                self.video_token,
            )
        return render_prompt(
            template.template,
            item.text,
            len(item.images),
            item.video is not None,
            self.image_token,
            self.video_token,
        )

    def source(self, prompt: str, item: VlmItem, truncate: Truncate) -> str:
        """The cache identity of an item: prompt, media hashes, preprocessing contract, truncation."""
        media = [f"image:{hashlib.sha256(d).hexdigest()}" for d in item.images]
        if item.video is not None:
            media.append(f"video:{hashlib.sha256(item.video).hexdigest()}")
        return "\x00".join(["vlm", self.fingerprint, truncate, prompt, *media])

    def prepare(self, prompt: str, item: VlmItem, truncate: Truncate) -> Prepared:
        """CPU work of one item (run on the media pool): tokenize, decode and preprocess its media in
        prompt order, expand the placeholders; refuses what the engine could not take."""
        ids = self.tokenizer.encode(prompt).ids
        images = iter(range(len(item.images)))
        visuals: list[Visual] = []
        timestamps = None
        for token in ids:
            if token == self.cfg.image_token_id:
                k = next(images, None)
                if k is None:
                    break  # more placeholders than images: prepare_item says so
                where = item.image_field(k)
                with _naming(where):
                    visuals.append(
                        prepare_image(open_image(item.images[k], self.settings, field=where), self.cfg)
                    )
            elif token == self.cfg.video_token_id and item.video is not None and timestamps is None:
                where = f"{item.field}.video"
                with _naming(where):
                    frames = decode_frames(
                        item.video, self.settings, self.cfg.frames, where, rate=self.frame_rate
                    )
                    visuals.append(
                        prepare_video(
                            frames.images, self.cfg, duration_s=frames.duration_s, times=frames.timestamps
                        )
                    )
                timestamps = frames.timestamps
        if timestamps is not None and self.cfg.family == "qwen3-vl":  # a timestamp before every frame pair
            ids = self.tokenizer.encode(qwen3_video_prompt(prompt, visuals, self.cfg)).ids
        limit = self.spec.max_seq_length
        truncated = False
        if not visuals and truncate != "none" and len(ids) > limit:
            ids, truncated = self._cut(ids, prompt, item.text, truncate), True
        prepared = prepare_item(ids, visuals, self.cfg, item.field)
        if prepared.lm_tokens > limit:
            visual = prepared.lm_tokens - len(ids) + len(visuals)
            raise PayloadTooLarge(
                f"item has {prepared.lm_tokens} language-model tokens ({visual} visual), over the model's "
                f"{limit}" + ("" if visuals else "; send truncate='end' or 'start' to cut it"),
                field=item.field,
            )
        return Prepared(prepared, truncated, timestamps)

    def _cut(self, ids: list[int], prompt: str, text: str | None, truncate: Truncate) -> list[int]:
        """A text-only prompt over the limit, cut to it: VLM2Vec's at its end or start, as text models are
        cut; a chat prompt inside its user turn, so the turns and the pooled last token stay (cutting the
        string's end would pool a word of the text)."""
        limit = self.spec.max_seq_length
        if self.spec.vlm_options.prompt != "chat" or not text:
            return ids[:limit] if truncate == "end" else ids[-limit:]
        head = self.tokenizer.encode(prompt[: prompt.rindex(text + CHAT_TAIL)]).ids
        tail = self.tokenizer.encode(CHAT_TAIL).ids
        room = limit - len(head) - len(tail)
        if room < 1:  # the turns alone are over the limit: prepare_item's check refuses the item
            return ids
        kept = self.tokenizer.encode(text).ids
        return head + (kept[:room] if truncate == "end" else kept[-room:]) + tail


@contextlib.contextmanager
def _naming(field: str) -> Iterator[None]:
    """Preprocessing errors (an image with a degenerate aspect ratio, no frames) name the media's field."""
    try:
        yield
    except EmbedfleetError as exc:
        exc.field = exc.field or field
        raise


def prepare_inline(items: Sequence[VlmItem], settings: Settings) -> bool:
    """Whether to prepare these items on the event loop rather than the media pool: no video, at most
    `INLINE_TEXT_CHARS` of text, and images small enough to decode there (`decode_inline`). Together with
    several batches in flight, served images/s rose 20-30% (bench/README.md, "Small VLM requests")."""
    if any(item.video is not None for item in items):
        return False
    if sum(len(item.text or "") for item in items) > INLINE_TEXT_CHARS:
        return False
    return decode_inline([data for item in items for data in item.images], settings)


def engine_inputs(items: Sequence[PreparedItem]) -> tuple[np.ndarray, ...]:
    """The vlm engine's five tensors for a group of items (trt_build/vlm_model.py's I/O contract)."""
    return (
        np.concatenate([i.input_ids for i in items]),
        np.asarray([i.lm_tokens for i in items], dtype=np.int64),
        np.concatenate([i.position_ids for i in items], axis=1),
        np.concatenate([i.pixel_values for i in items]),
        np.concatenate([i.grid_thw for i in items]),
    )


def vlm_batching(encoder: Encoder, spec: ModelSpec, settings: Settings) -> dict[str, Any]:
    """The batcher's runner (one Triton request per batch of items) and its two budgets."""

    async def run(rows: list[PreparedItem]) -> np.ndarray:
        return await encoder.embed_vlm(spec.triton_name, *engine_inputs(rows))

    def lm_tokens(item: PreparedItem) -> int:
        return item.lm_tokens

    def patches(item: PreparedItem) -> int:
        return item.vision_patches

    return {
        "run": run,
        "cost": lm_tokens,
        "tokens": min(spec.batching.max_batch_tokens, settings.max_batch_tokens),
        "patch_cost": patches,
        "max_batch_patches": spec.batching.max_batch_patches,
    }


async def vlm_texts(
    embedder: Embedder,
    spec: ModelSpec,
    texts: list[str] | None,
    template: Template,
    dimensions: int | None,
    normalize: bool | None,
    truncate: Truncate,
    lane: str,
    field: str,
) -> VlmEmbedded:
    """Text-only items (OpenAI's `input`, documents, queries); token-id inputs have no prompt to assemble."""
    if texts is None:
        raise InvalidInput(f"model {spec.name} takes text, not token ids", field=field)
    items = [VlmItem(text=t, field=f"{field}[{i}]") for i, t in enumerate(texts)]
    return await embed_vlm(
        embedder,
        spec,
        items,
        template,
        dimensions=dimensions,
        normalize=normalize,
        truncate=truncate,
        lane=lane,
    )


async def vlm_media(
    embedder: Embedder,
    spec: ModelSpec,
    kind: str,
    data: bytes,
    template: Template,
    dimensions: int | None,
    normalize: bool | None,
    lane: str,
    field: str,
) -> VlmEmbedded:
    """One image or one video as an item (a document or a query); `field` names the media."""
    base = field.rpartition(".")[0] or field
    item = VlmItem(images=(data,), field=base) if kind == "image" else VlmItem(video=data, field=base)
    return await embed_vlm(
        embedder,
        spec,
        [item],
        template,
        dimensions=dimensions,
        normalize=normalize,
        truncate="end",
        lane=lane,
    )


async def embed_vlm(
    embedder: Embedder,
    spec: ModelSpec,
    items: Sequence[VlmItem],
    template: Template,
    *,
    dimensions: int | None,
    normalize: bool | None,
    truncate: Truncate,
    lane: str,
) -> VlmEmbedded:
    """Admission, prompts, cache, preprocessing on the media pool, the two-budget batcher, vectors."""
    embedder.check_dimensions(spec, dimensions)
    model = embedder.vlm_model(spec)
    norm = spec.normalize if normalize is None else normalize
    batcher = embedder.batcher(spec)
    n = len(items)
    with batcher.admit(n, lane):  # 429 before any decoding
        prompts = [model.prompt(template, item) for item in items]
        cacheable = [embedder.caching(lane) and item.video is None for item in items]
        keys = [
            cache_key(spec.ref, model.source(p, item, truncate), dimensions, norm) if ok else ""
            for p, item, ok in zip(prompts, items, cacheable, strict=True)
        ]
        out, missing = await split_cached(embedder.cache, keys, dimensions or spec.dimension)
        todo = [items[i] for i in missing]
        if prepare_inline(todo, model.settings):
            prepared = [model.prepare(prompts[i], items[i], truncate) for i in missing]
        else:
            prepared = await asyncio.gather(
                *(embedder.preprocess(model.prepare, prompts[i], items[i], truncate) for i in missing)
            )
        for i, p in zip(missing, prepared, strict=True):
            batcher.check_fits(p.item, items[i].field, "item")
        raw = await batcher.submit([p.item for p in prepared], lane=lane) if prepared else None
    tokens, truncated = [0] * n, [False] * n
    timestamps: list[list[float] | None] = [None] * n
    if raw is not None:
        await fill_fresh(embedder.cache, out, keys, missing, finish(raw, dimensions, norm))
        for i, p in zip(missing, prepared, strict=True):
            tokens[i], truncated[i], timestamps[i] = p.item.lm_tokens, p.truncated, p.timestamps
        metrics.TOKENS.labels(spec.name).inc(sum(tokens))
    for kind, group in itertools.groupby(sorted(item.kind for item in items)):
        metrics.INPUTS.labels(spec.name, kind).inc(len(list(group)))
    return VlmEmbedded(out, tokens, truncated, timestamps, prompts, n - len(missing))
