"""The `vlm` path without Triton: VLM2Vec prompt assembly (exact strings and ids), the Embedder over the
in-process engine (`trt_build.vlm_model` on the vlm-shapes folder) against inputs prepared independently,
the two batching budgets and their 413s, cache keys, and hostile media on a VLM."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer

from services.cache import LRUCache, NoCache
from services.config import get_settings
from services.embedder import Embedder
from services.errors import InvalidInput, PayloadTooLarge, UnsupportedMedia
from services.media import qwen2vl as q
from services.media.video import RateSampling, decode_frames
from services.multimodal import Item, ItemResult, embed_items
from services.registry import Batching, ModelSpec, Registry, Side, Vlm, load_presets, load_registry
from services.templates import Template
from services.vlm import (
    INLINE_TEXT_CHARS,
    VlmItem,
    VlmModel,
    chat_prompt,
    prepare_inline,
    render_prompt,
    vlm_template,
)
from trt_build.synthetic import shapes
from trt_build.vlm_model import VlmEngine, VlmRequest

REGISTRY = load_registry()
SPEC = REGISTRY.get("vlm-shapes")
IMG, VID = "<|image_pad|>", "<|video_pad|>"


def prompt(template: str, text: str | None = None, images: int = 0, video: bool = False) -> str:
    return render_prompt(template, text, images, video, IMG, VID)


@pytest.mark.parametrize(
    ("template", "text", "images", "video", "expected"),
    [
        # the registry's V2-eval strings, byte for byte (templates.md section 1)
        ("{image}\nRepresent the given image.\n", None, 1, False, f"{IMG}\nRepresent the given image.\n"),
        (
            "{image}\nRepresent the given image with the following question: {text}\n",
            "What is in the image",
            1,
            False,
            f"{IMG}\nRepresent the given image with the following question: What is in the image\n",
        ),
        ("{video} Understand the content of the provided video.", None, 0, True,
         f"{VID} Understand the content of the provided video."),
        # an instruction alone is assembled as VLM2Vec's process_input_text: the V2 demos' strings
        ("Represent the given image with the following question:", "What is in the image", 1, False,
         f"{IMG} Represent the given image with the following question: What is in the image"),
        ("Represent the given video.", None, 0, True, f"{VID} Represent the given video."),
        ("Find me an everyday image that matches the given caption:", "a red square", 0, False,
         "Find me an everyday image that matches the given caption: a red square"),
        # several images, image and video, an image slot left empty
        ("Compare", "them", 2, False, f"{IMG} {IMG} Compare them"),
        ("Describe", None, 1, True, f"{IMG} {VID} Describe"),
        ("{image}\nRepresent the given image.\n", None, 0, False, "\nRepresent the given image.\n"),
        ("{text}", "plain", 0, False, "plain"),
    ],
)  # fmt: skip
def test_prompt_assembly_is_vlm2vec(
    template: str, text: str | None, images: int, video: bool, expected: str
) -> None:
    assert prompt(template, text, images, video) == expected


def test_registry_templates_and_instruction_override() -> None:
    t = vlm_template(SPEC, "composed_retrieval", Side.query)
    want = f"{IMG}\nGiven an image, find a similar everyday image with the described changes: make it blue\n"
    assert prompt(t.template, "make it blue", 1) == want
    assert vlm_template(SPEC, "retrieval", Side.document).template == "{image}\nRepresent the given image.\n"
    override = vlm_template(SPEC, "retrieval", Side.query, instruction="Find it:")
    assert override == Template("instruction", "Find it:")  # verbatim: no "{text}" appended
    tok = Tokenizer.from_file(str(SPEC.model_file("tokenizer.json")))
    ids = tok.encode(prompt(vlm_template(SPEC, "retrieval", Side.document).template, None, 1)).ids
    assert (
        ids[0] == q.config_from_hf({}, json.loads(SPEC.model_file("config.json").read_text())).image_token_id
    )
    assert tok.decode(ids[-1:]).endswith("\n")  # the pooled token of VLM2Vec's image targets ends the line


def test_preprocessing_contract_comes_from_the_folder_and_the_registry_wins(tmp_path: Path) -> None:
    pre = json.loads(SPEC.model_file("preprocessor_config.json").read_text())
    cfg = VlmModel(SPEC, get_settings()).cfg
    assert (cfg.min_pixels, cfg.max_pixels, cfg.video_max_pixels) == (
        pre["min_pixels"],
        pre["max_pixels"],
        pre["video_max_pixels"],
    )
    assert cfg.frames == SPEC.video_frames and cfg.family == "qwen2-vl"
    wider = SPEC.model_copy(update={"vlm": Vlm(min_pixels=28 * 28, max_pixels=28 * 28 * 16)})
    model = VlmModel(wider, get_settings())
    assert (model.cfg.min_pixels, model.cfg.max_pixels) == (784, 12544)
    assert model.fingerprint != VlmModel(SPEC, get_settings()).fingerprint  # part of every cache key


# --- the Embedder over the in-process engine --------------------------------------------------------


class EngineEncoder:
    """The Encoder protocol's `embed_vlm` over VlmEngine in-process: what Triton's python backend runs."""

    def __init__(self, engine: VlmEngine) -> None:
        self.engine = engine
        self.calls: list[tuple[int, int]] = []  # (items, patches) per batch

    async def embed_vlm(
        self,
        model: str,
        ids: np.ndarray,
        lengths: np.ndarray,
        pos: np.ndarray,
        pix: np.ndarray,
        grid: np.ndarray,
    ) -> np.ndarray:
        self.calls.append((len(lengths), len(pix)))
        out = self.engine.embed([VlmRequest(ids, lengths, pos, pix, grid)])[0]
        if isinstance(out, Exception):
            raise out
        return out

    async def close(self) -> None:
        return None


@pytest.fixture(scope="module")
def engine() -> VlmEngine:
    torch.set_num_threads(1)
    return VlmEngine.load(
        str(SPEC.source_dir()), device="cpu", dtype="float32", padding_side=SPEC.padding_side
    )


def embedder_for(
    engine: VlmEngine, spec: ModelSpec = SPEC, cache: bool = False, **settings: object
) -> Embedder:
    s = get_settings(models=[spec.name], **settings)
    store = LRUCache(100, 3600) if cache else NoCache()
    return Embedder(s, Registry(models=[spec]), EngineEncoder(engine), store)  # type: ignore[arg-type]


def png(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def run(embedder: Embedder, items: list[Item], **kw: object) -> list[ItemResult]:
    async def go() -> list[ItemResult]:
        try:
            opts = {
                "task": None,
                "instruction": None,
                "dimensions": None,
                "normalize": None,
                "truncate": "end",
            }
            return (await embed_items(embedder, embedder.settings.models[0], items, **{**opts, **kw}))[0]
        finally:
            await embedder.close()

    return asyncio.run(go())


@pytest.fixture(scope="module")
def media() -> Iterator[dict]:
    held = shapes.held_out_items()[:2]
    video = shapes.render_video(held[0].attrs, seed=3)
    yield {"images": [h.image for h in held], "video": video}


def reference(
    engine: VlmEngine, text: str, images: list[Image.Image], frames: list | None = None
) -> np.ndarray:
    """The engine's vector for a prompt string written out by hand, prepared with qwen2vl directly."""
    cfg = VlmModel(SPEC, get_settings()).cfg
    tok = Tokenizer.from_file(str(SPEC.model_file("tokenizer.json")))
    visuals = [q.prepare_image(i, cfg) for i in images]
    if frames is not None:
        visuals.append(q.prepare_video(frames.images, cfg, duration_s=frames.duration_s))
    item = q.prepare_item(tok.encode(text).ids, visuals, cfg)
    req = VlmRequest(
        item.input_ids, np.array([item.lm_tokens]), item.position_ids, item.pixel_values, item.grid_thw
    )
    return engine.embed([req])[0][0]


def test_items_equal_the_engine_on_independently_prepared_inputs(engine: VlmEngine, media: dict) -> None:
    a, b = media["images"]
    vid = base64.b64encode(media["video"]).decode()
    cir = "\nGiven an image, find a similar everyday image with the described changes: {}\n"
    items = [
        Item(text="a red square"),
        Item(image=png(a)),
        Item(text="make it blue", image=png(a)),
        Item(image=png(a), images=(png(b),)),
        Item(video=vid),
    ]
    out = run(embedder_for(engine), items, task="composed_retrieval")
    frames = decode_frames(media["video"], get_settings(), SPEC.video_frames)
    expected = [
        ("text", cir.format("a red square"), []),
        ("image", IMG + cir.format(""), [a]),
        ("text+image", IMG + cir.format("make it blue"), [a]),
        ("image", f"{IMG} {IMG}" + cir.format(""), [a, b]),
        ("video", f"{VID} " + cir.format(""), []),
    ]
    for r, (kind, text, images) in zip(out, expected, strict=True):
        assert (r.kind, r.prompt) == (kind, text)
        ref = reference(engine, text, images, frames if kind == "video" else None)
        np.testing.assert_allclose(r.vector, ref, atol=1e-5)
    assert out[4].timestamps == frames.timestamps and len(out[4].timestamps) == SPEC.video_frames
    assert all(r.tokens > 0 for r in out) and not any(r.truncated for r in out)


def test_batches_count_tokens_and_patches(engine: VlmEngine, media: dict) -> None:
    """Rows are items; a batch closes on the patch budget even with token room left."""
    per_image = VlmModel(SPEC, get_settings()).cfg.max_pixels // 14**2  # min = max pixels in this folder
    spec = SPEC.model_copy(
        update={"batching": Batching(max_batch_tokens=4096, max_batch_patches=2 * per_image)}
    )
    embedder = embedder_for(engine, spec, max_wait_ms=50)
    items = [Item(image=png(media["images"][i % 2])) for i in range(5)]
    run(embedder, items, task="retrieval.passage")
    calls = embedder.encoder.calls  # type: ignore[attr-defined]
    assert sum(n for n, _ in calls) == 5 and max(p for _, p in calls) <= 2 * per_image and len(calls) >= 3


@pytest.mark.parametrize(
    ("item", "budgets", "error", "field"),
    [
        (Item(images=("A",) * 5), {}, PayloadTooLarge, "inputs[0].images"),  # max_images 4
        (Item(image="A"), {"max_batch_patches": 4}, PayloadTooLarge, "inputs[0]"),
        (Item(text="x " * 600), {"truncate": "none"}, PayloadTooLarge, "inputs[0]"),
        (Item(text=f"{IMG} smuggled placeholder"), {}, InvalidInput, "inputs[0]"),
        (
            Item(image=base64.b64encode(b"GIF89a not really").decode()),
            {},
            UnsupportedMedia,
            "inputs[0].image",
        ),
    ],
)
def test_an_item_no_batch_can_hold_is_refused_naming_its_field(
    engine: VlmEngine, media: dict, item: Item, budgets: dict, error: type, field: str
) -> None:
    truncate = budgets.pop("truncate", "end")
    spec = SPEC.model_copy(update={"batching": SPEC.batching.model_copy(update=budgets)})
    real = png(media["images"][0])
    item = Item(item.text, real if item.image == "A" else item.image, None, tuple(real for _ in item.images))
    with pytest.raises(error) as exc:
        run(embedder_for(engine, spec), [item], truncate=truncate)
    assert exc.value.field == field


def test_text_is_truncated_like_text_models(engine: VlmEngine) -> None:
    out = run(embedder_for(engine), [Item(text="x " * 600)])
    assert out[0].truncated and out[0].tokens == SPEC.max_seq_length


def test_cache_key_covers_prompt_media_and_preprocessing(engine: VlmEngine, media: dict) -> None:
    a, b = (png(i) for i in media["images"])
    model = VlmModel(SPEC, get_settings())
    one = VlmItem(images=(base64.b64decode(a),))
    other = VlmItem(images=(base64.b64decode(b),))
    keys = {
        model.source("p", one, "end"),
        model.source("q", one, "end"),
        model.source("p", other, "end"),
        model.source("p", one, "start"),
        VlmModel(SPEC.model_copy(update={"vlm": Vlm(max_pixels=28 * 28 * 9)}), get_settings()).source(
            "p", one, "end"
        ),
    }
    assert len(keys) == 5
    embedder = embedder_for(engine, cache=True)

    async def twice() -> tuple[list[ItemResult], list[ItemResult]]:
        opts = {
            "task": "retrieval.passage",
            "instruction": None,
            "dimensions": None,
            "normalize": None,
            "truncate": "end",
        }
        first = (await embed_items(embedder, SPEC.name, [Item(image=a), Item(image=b)], **opts))[0]
        again = (await embed_items(embedder, SPEC.name, [Item(image=b), Item(image=a)], **opts))[0]
        await embedder.close()
        return first, again

    first, again = asyncio.run(twice())
    assert len(embedder.encoder.calls) == 1  # type: ignore[attr-defined]
    np.testing.assert_array_equal(again[1].vector, first[0].vector)
    np.testing.assert_array_equal(again[0].vector, first[1].vector)


def test_small_requests_are_prepared_on_the_loop_and_the_rest_on_the_media_pool(media: dict) -> None:
    """No video, little text, images whose headers add up to at most `media_inline_pixels`."""
    settings = get_settings()
    small = base64.b64decode(png(media["images"][0]))  # 64 x 64
    big = base64.b64decode(png(Image.new("RGB", (200, 100))))  # 20,000 pixels
    assert settings.media_inline_pixels == 16_384
    assert prepare_inline([VlmItem(images=(small,)), VlmItem(text="a red square")], settings)
    assert prepare_inline([VlmItem(images=(small,) * 4)], settings)  # 16,384: at the budget
    assert not prepare_inline([VlmItem(images=(small,) * 4), VlmItem(images=(small,))], settings)
    assert not prepare_inline([VlmItem(images=(big,))], settings)
    assert not prepare_inline([VlmItem(images=(b"GIF89a not really",))], settings)  # the pool names it
    assert not prepare_inline([VlmItem(video=b"anything")], settings)
    assert not prepare_inline([VlmItem(text="x" * (INLINE_TEXT_CHARS + 1))], settings)
    assert not prepare_inline([VlmItem(images=(small,))], get_settings(media_inline_pixels=0))


def test_inline_and_pooled_preparation_give_the_same_vectors(engine: VlmEngine, media: dict) -> None:
    items = [Item(image=png(media["images"][0])), Item(text="make it blue", image=png(media["images"][1]))]
    inline, pooled = embedder_for(engine), embedder_for(engine, media_inline_pixels=0)
    a, b = run(inline, items), run(pooled, items)
    assert "media" not in inline._pools and "media" in pooled._pools
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.vector, y.vector)


def test_a_models_inflight_overrides_the_setting(engine: VlmEngine) -> None:
    assert SPEC.batching.inflight == 4  # the vlm engine merges what Triton queued meanwhile
    spec = SPEC.model_copy(update={"batching": SPEC.batching.model_copy(update={"inflight": None})})
    assert embedder_for(engine, inflight_batches=3).batcher(SPEC).inflight == 4
    assert embedder_for(engine, spec, inflight_batches=3).batcher(spec).inflight == 3


def test_a_qwen3_vl_video_item_has_a_timestamp_before_every_frame_pair(media: dict) -> None:
    """On a Qwen3-VL model (a tiny random one) the decoded frames' times are written into the prompt
    before it is tokenized, as its processor writes them: equal to the engine on that prompt written
    out by hand and prepared directly."""
    from tests.unit.trt_build.tiny_qwen_vl import backbone_dir

    folder = backbone_dir("qwen3-vl")
    hidden = json.loads((folder / "config.json").read_text())["text_config"]["hidden_size"]
    spec = ModelSpec.model_validate(
        {
            **SPEC.model_dump(exclude={"vlm", "source", "batching"}, exclude_unset=True),
            "name": "qwen3-vl-tiny",
            "dimension": hidden,
            "source": {"type": "path", "path": str(folder)},
            "vlm": {"family": "qwen3-vl"},
        }
    )
    engine = VlmEngine.load(str(folder), device="cpu", dtype="float32", padding_side="left")
    vid = base64.b64encode(media["video"]).decode()
    (out,) = run(embedder_for(engine, spec), [Item(video=vid)], task="video_retrieval")
    frames = decode_frames(media["video"], get_settings(), spec.video_frames)
    cfg = VlmModel(spec, get_settings()).cfg
    pairs = [(a + b) / 2 for a, b in zip(frames.timestamps[::2], frames.timestamps[1::2], strict=True)]
    written = "".join(f"<{t:.1f} seconds><|vision_start|>{VID}<|vision_end|>" for t in pairs)
    assert out.prompt.startswith(VID) and len(pairs) == spec.video_frames // 2
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    video = q.prepare_video(frames.images, cfg, duration_s=frames.duration_s, times=frames.timestamps)
    item = q.prepare_item(tok.encode(written + out.prompt[len(VID) :]).ids, [video], cfg)
    req = VlmRequest(
        item.input_ids, np.array([item.lm_tokens]), item.position_ids, item.pixel_values, item.grid_thw
    )
    np.testing.assert_allclose(out.vector, engine.embed([req])[0][0], atol=1e-5)


# --- Qwen3-VL-Embedding's chat input (registry `vlm.prompt: chat`) --------------------------------------

VS, VE = "<|vision_start|>", "<|vision_end|>"


def chat(system: str, user: str) -> str:
    """The Qwen3-VL chat template's rendering of a system turn and a user turn, generation prompt added."""
    return (
        f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.parametrize(
    ("instruction", "text", "images", "video", "expected"),
    [
        ("", "a red square", 0, False, chat("Represent the user's input.", "a red square")),
        ("Retrieve images or text relevant to the user's query", "a red square", 0, False,
         chat("Retrieve images or text relevant to the user's query.", "a red square")),
        ("  Is it red?  ", "x", 0, False, chat("Is it red?", "x")),  # stripped; ends in punctuation
        ("找到它。", "x", 0, False, chat("找到它。", "x")),  # a CJK full stop is punctuation too
        ("Find it", None, 1, False, chat("Find it.", f"{VS}{IMG}{VE}")),
        ("", "make it blue", 1, False, chat("Represent the user's input.", f"{VS}{IMG}{VE}make it blue")),
        ("", "compare", 2, True,
         chat("Represent the user's input.", f"{VS}{VID}{VE}{VS}{IMG}{VE}{VS}{IMG}{VE}compare")),
        ("", None, 0, False, chat("Represent the user's input.", "NULL")),
        ("", "", 0, False, chat("Represent the user's input.", "NULL")),
    ],
)  # fmt: skip
def test_chat_prompt_is_qwen3_vl_embeddings_published_input(
    instruction: str, text: str | None, images: int, video: bool, expected: str
) -> None:
    assert chat_prompt(instruction, text, images, video, IMG, VID) == expected


def test_a_chat_prompt_model_takes_no_template_slots() -> None:
    base = {**SPEC.model_dump(exclude={"vlm", "templates", "preset"}, exclude_unset=True), "name": "chat-vlm"}
    ok = ModelSpec.model_validate(
        {**base, "vlm": {"prompt": "chat"}, "templates": load_presets()["qwen3-vl-embedding"]["templates"]}
    )
    assert ok.vlm_options.prompt == "chat"
    with pytest.raises(ValueError, match=r"templates.retrieval: a chat-prompt vlm model"):
        ModelSpec.model_validate(
            {**base, "vlm": {"prompt": "chat"}, "templates": {"retrieval": {"query": "Find: {text}"}}}
        )


def qwen3_embedding_spec(**vlm: object) -> tuple[ModelSpec, Path]:
    """A Qwen3-VL-Embedding-style registry entry over a tiny random Qwen3-VL folder (the real vocabulary)."""
    from tests.unit.trt_build.tiny_qwen_vl import backbone_dir

    folder = backbone_dir("qwen3-vl")
    hidden = json.loads((folder / "config.json").read_text())["text_config"]["hidden_size"]
    spec = ModelSpec.model_validate(
        {
            **SPEC.model_dump(
                exclude={"vlm", "source", "batching", "templates", "preset"}, exclude_unset=True
            ),
            "name": "qwen3-vl-embedding-tiny",
            "dimension": hidden,
            "padding_side": "right",
            "source": {"type": "path", "path": str(folder)},
            "templates": load_presets()["qwen3-vl-embedding"]["templates"],
            "vlm": {"family": "qwen3-vl", "prompt": "chat", **vlm},
        }
    )
    return spec, folder


def test_a_chat_prompt_item_is_the_published_turns_through_the_engine(media: dict) -> None:
    """Image + text on a chat-prompt model: the rendered prompt is the published chat form with the
    retrieval query instruction, and the vector is the engine's on that string tokenized by hand."""
    spec, folder = qwen3_embedding_spec()
    engine = VlmEngine.load(str(folder), device="cpu", dtype="float32", padding_side="right")
    (out,) = run(
        embedder_for(engine, spec),
        [Item(text="make it blue", image=png(media["images"][0]))],
        task="retrieval",
    )
    want = chat("Retrieve images or text relevant to the user's query.", f"{VS}{IMG}{VE}make it blue")
    assert out.prompt == want
    cfg = VlmModel(spec, get_settings()).cfg
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    item = q.prepare_item(tok.encode(want).ids, [q.prepare_image(media["images"][0], cfg)], cfg)
    assert tok.decode(item.input_ids[-1:].tolist()) == "\n"  # the assistant turn's newline: the pooled token
    req = VlmRequest(
        item.input_ids, np.array([item.lm_tokens]), item.position_ids, item.pixel_values, item.grid_thw
    )
    np.testing.assert_allclose(out.vector, engine.embed([req])[0][0], atol=1e-5)
    (plain,) = run(embedder_for(engine, spec), [Item(text="make it blue")], task=None)
    assert plain.prompt == chat("Represent the user's input.", "make it blue")


def test_a_chat_prompt_video_is_sampled_at_its_rate_with_timestamps_in_the_user_turn() -> None:
    spec, folder = qwen3_embedding_spec(fps=1.0)
    spec = spec.model_copy(update={"video_frames": 64})
    clip = shapes.render_video(shapes.held_out_items()[0].attrs, seed=3, frames=24, fps=4)  # 6 s at 4 fps
    engine = VlmEngine.load(str(folder), device="cpu", dtype="float32", padding_side="right")
    (out,) = run(embedder_for(engine, spec), [Item(video=base64.b64encode(clip).decode())], task=None)
    frames = decode_frames(clip, get_settings(), 64, rate=RateSampling(1.0))
    assert len(frames.images) == 6  # 6 s at 1 fps, even
    pairs = [(a + b) / 2 for a, b in zip(frames.timestamps[::2], frames.timestamps[1::2], strict=True)]
    written = "".join(f"<{t:.1f} seconds>{VS}{VID}{VE}" for t in pairs)
    assert out.prompt == chat("Represent the user's input.", f"{VS}{VID}{VE}")  # as rendered, before decoding
    cfg = VlmModel(spec, get_settings()).cfg
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    video = q.prepare_video(frames.images, cfg, duration_s=frames.duration_s, times=frames.timestamps)
    item = q.prepare_item(tok.encode(chat("Represent the user's input.", written)).ids, [video], cfg)
    req = VlmRequest(
        item.input_ids, np.array([item.lm_tokens]), item.position_ids, item.pixel_values, item.grid_thw
    )
    np.testing.assert_allclose(out.vector, engine.embed([req])[0][0], atol=1e-5)


@pytest.mark.parametrize("side", ["end", "start"])
def test_an_over_long_chat_text_is_cut_inside_its_user_turn(side: str) -> None:
    """Cutting the prompt's end would drop the generation prompt and pool a word of the text: the text is
    cut instead, the turns kept whole, the item exactly at the limit."""
    spec, folder = qwen3_embedding_spec()
    spec = spec.model_copy(update={"max_seq_length": 48})
    model = VlmModel(spec, get_settings())
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    text = " ".join(f"word{k}" for k in range(200))
    prompt = model.prompt(vlm_template(spec, "retrieval", Side.query), VlmItem(text=text))
    got = model.prepare(prompt, VlmItem(text=text), side)  # type: ignore[arg-type]
    ids = got.item.input_ids.tolist()
    assert got.truncated and len(ids) == 48
    head = tok.encode(
        chat("Retrieve images or text relevant to the user's query.", "")[
            : -len("<|im_end|>\n<|im_start|>assistant\n")
        ]
    ).ids
    tail = tok.encode("<|im_end|>\n<|im_start|>assistant\n").ids
    words = tok.encode(text).ids
    room = 48 - len(head) - len(tail)
    assert ids == head + (words[:room] if side == "end" else words[-room:]) + tail
    assert tok.decode(ids[-1:]) == "\n"  # still the assistant turn's newline that is pooled
    with pytest.raises(PayloadTooLarge, match="truncate"):
        model.prepare(prompt, VlmItem(text=text), "none")
