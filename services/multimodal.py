"""Native multimodal items: text, image, video, or text and image together in one item.

Dual-tower models fuse the normalized tower vectors with the registry's weights (UniIR's score-level
fusion); the text part is rendered with the task template, whose `{image}` slot marks where the image
goes and renders empty for the text tower. VLM models would render the placeholder tokens into one
sequence instead: their templates are in the registry, the engine is not served yet.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from services.config import Settings
from services.media.fetch import load_media_field
from services.registry import Kind, Side
from services.templates import Template, resolve
from services.vectors import finish, fuse

if TYPE_CHECKING:
    from services.embedder import Embedder


@dataclass(frozen=True)
class Item:
    text: str | None = None
    image: str | None = None
    video: str | None = None


@dataclass(frozen=True)
class ItemResult:
    vector: np.ndarray
    kind: str  # text | image | video | text+image | text+video
    tokens: int = 0
    truncated: bool = False
    timestamps: list[float] | None = None


async def media_bytes(settings: Settings, kind: str, value: str, field: str) -> bytes:
    """base64, data URI, or (when enabled) a URL fetched under the SSRF policy."""
    limit = settings.max_image_bytes if kind == "image" else settings.max_video_bytes
    return await load_media_field(value, settings, max_bytes=limit, field=field)


async def embed_item(
    embedder: Embedder,
    model: str,
    item: Item,
    template: Template,
    *,
    dimensions: int | None,
    normalize: bool | None,
    truncate: str,
    index: int,
) -> ItemResult:
    field = f"inputs[{index}]"
    media_kind = "image" if item.image is not None else "video" if item.video is not None else None
    media = None
    if media_kind is not None:
        data = await media_bytes(
            embedder.settings, media_kind, item.image or item.video or "", f"{field}.{media_kind}"
        )
        media = await embedder.embed_media(
            model, media_kind, data, dimensions=dimensions, normalize=normalize, field=f"{field}.{media_kind}"
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
    if all(i.image is None and i.video is None for i in items):  # text only: one batched call
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
    spec = embedder.spec(model)
    if spec.kind is Kind.vlm:
        from services.errors import InvalidInput

        raise InvalidInput(f"model {model}: no VLM engine is served yet (templates only)", field="model")
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
                index=i,
            )
            for i, item in enumerate(items)
        )
    )
    return list(results), template
