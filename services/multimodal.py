"""Native multimodal items: text, image(s), video, or text with media in one item.

Dual-tower models fuse the normalized tower vectors with the registry's weights (UniIR's score-level
fusion); the text part is rendered with the task template, whose `{image}` slot marks where the image
goes and renders empty for the text tower. VLM models take the whole item as one sequence: the template
renders the placeholder tokens with VLM2Vec's prompt assembly and the backbone sees text, images and
video together (services/vlm.py); only they take several images in one item.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from services.config import Settings
from services.errors import InvalidInput
from services.media.fetch import load_media_field
from services.registry import Kind, ModelSpec, Side
from services.templates import Template, resolve
from services.vectors import finish, fuse
from services.vlm import RAW_TEXT, VlmItem, embed_vlm, vlm_template

if TYPE_CHECKING:
    from services.embedder import Embedder


@dataclass(frozen=True)
class Item:
    text: str | None = None
    image: str | None = None
    video: str | None = None
    images: tuple[str, ...] = ()  # more images in the same item (VLM models)

    @property
    def all_images(self) -> tuple[str, ...]:
        return ((self.image,) if self.image is not None else ()) + self.images

    @property
    def is_text(self) -> bool:
        return self.text is not None and not self.all_images and self.video is None

    def image_fields(self, field: str) -> list[str]:
        first = [f"{field}.image"] if self.image is not None else []
        return first + [f"{field}.images[{k}]" for k in range(len(self.images))]


@dataclass(frozen=True)
class ItemResult:
    vector: np.ndarray
    kind: str  # text | image | video | text+image | text+video | image+video | text+image+video
    tokens: int = 0
    truncated: bool = False
    timestamps: list[float] | None = None
    prompt: str | None = None  # vlm: the rendered prompt, placeholders not yet expanded


async def media_bytes(settings: Settings, kind: str, value: str, field: str) -> bytes:
    """base64, data URI, or (when enabled) a URL fetched under the SSRF policy."""
    limit = settings.max_image_bytes if kind == "image" else settings.max_video_bytes
    return await load_media_field(value, settings, max_bytes=limit, field=field)


async def _vlm_item(settings: Settings, item: Item, field: str) -> VlmItem:
    fields = item.image_fields(field)
    images = await asyncio.gather(
        *(media_bytes(settings, "image", v, f) for v, f in zip(item.all_images, fields, strict=True))
    )
    video = None if item.video is None else await media_bytes(settings, "video", item.video, f"{field}.video")
    return VlmItem(item.text, tuple(images), video, field, tuple(fields))


async def embed_vlm_items(
    embedder: Embedder,
    spec: ModelSpec,
    items: list[Item],
    template: Template,
    fields: list[str],
    dimensions: int | None,
    normalize: bool | None,
    truncate: str,
) -> list[ItemResult]:
    """Items of a VLM in one batched call: every item is one sequence (services/vlm.py)."""
    parts = await asyncio.gather(
        *(_vlm_item(embedder.settings, i, f) for i, f in zip(items, fields, strict=True))
    )
    out = await embed_vlm(
        embedder,
        spec,
        parts,
        template,
        dimensions=dimensions,
        normalize=normalize,
        truncate=truncate,  # type: ignore[arg-type]
        lane="online",
    )
    return [
        ItemResult(out.vectors[i], p.kind, out.tokens[i], out.truncated[i], out.timestamps[i], out.prompts[i])
        for i, p in enumerate(parts)
    ]


async def embed_item(
    embedder: Embedder,
    model: str,
    item: Item,
    template: Template,
    *,
    dimensions: int | None,
    normalize: bool | None,
    truncate: str,
    field: str,
) -> ItemResult:
    spec = embedder.spec(model)
    if spec.kind is Kind.vlm:
        return (
            await embed_vlm_items(embedder, spec, [item], template, [field], dimensions, normalize, truncate)
        )[0]
    if len(item.all_images) > 1:
        raise InvalidInput(f"model {model} takes one image per item", field=f"{field}.images")
    image = item.all_images[0] if item.all_images else None
    media_kind = "image" if image is not None else "video" if item.video is not None else None
    media = None
    if media_kind is not None:
        where = item.image_fields(field)[0] if image is not None else f"{field}.video"
        data = await media_bytes(embedder.settings, media_kind, image or item.video or "", where)
        media = await embedder.embed_media(
            model, media_kind, data, dimensions=dimensions, normalize=normalize, field=where
        )
    if item.text is None:
        assert media is not None
        return ItemResult(media.vector, media.kind, timestamps=media.timestamps)
    text = await embedder.embed_texts(
        model,
        [template.render(text=item.text)],
        apply_template=False,
        truncate=truncate,  # type: ignore[arg-type]
        dimensions=dimensions,
        normalize=normalize,
        field=field,
    )
    if media is None:
        return ItemResult(text.vectors[0], "text", text.tokens[0], text.truncated[0])
    w_text, w_media = embedder.fusion_weights(model)
    fused = fuse([text.vectors[0], media.vector], [w_text, w_media])
    vec = finish(fused[None, :], None, normalize is not False)[0]
    return ItemResult(vec, f"text+{media.kind}", text.tokens[0], text.truncated[0], media.timestamps)


async def embed_query(
    embedder: Embedder, model: str, query: Item, task: str | None, dimensions: int | None
) -> tuple[np.ndarray, Template | None]:
    """A search query with media (alone, or with text: a composed query) and the template it used; an
    image tower's query has none."""
    spec = embedder.spec(model, field="query")
    template: Template | None = None
    if spec.kind is Kind.vlm:
        template = vlm_template(spec, task, Side.query)
    elif query.text is not None:
        template = resolve(spec, task, Side.query)
    result = await embed_item(
        embedder,
        model,
        query,
        template or RAW_TEXT,
        dimensions=dimensions,
        normalize=None,
        truncate="end",
        field="query",
    )
    return result.vector, template


async def embed_items(
    embedder: Embedder,
    model: str,
    items: list[Item],
    *,
    task: str | None,
    instruction: str | None,
    dimensions: int | None,
    normalize: bool | None,
    truncate: str,
) -> tuple[list[ItemResult], Template | None]:
    spec = embedder.spec(model)
    if spec.kind is Kind.vlm:  # every item is one sequence, whatever it holds: one batched call
        template = vlm_template(spec, task, Side.query, instruction)
        fields = [f"inputs[{i}]" for i in range(len(items))]
        results = await embed_vlm_items(
            embedder, spec, items, template, fields, dimensions, normalize, truncate
        )
        return results, template
    if all(i.is_text for i in items):  # text only: one batched call
        out = await embedder.embed_texts(
            model,
            [i.text or "" for i in items],
            task=task,
            instruction=instruction,
            truncate=truncate,  # type: ignore[arg-type]
            dimensions=dimensions,
            normalize=normalize,
            field="inputs",
        )
        results = [ItemResult(v, "text", out.tokens[i], out.truncated[i]) for i, v in enumerate(out.vectors)]
        return results, out.template
    template = resolve(spec, task, Side.query, instruction)
    results = await asyncio.gather(
        *(
            embed_item(
                embedder,
                model,
                item,
                template,
                dimensions=dimensions,
                normalize=normalize,
                truncate=truncate,
                field=f"inputs[{i}]",
            )
            for i, item in enumerate(items)
        )
    )
    return list(results), template
