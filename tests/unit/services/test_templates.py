"""Golden template renderings: byte for byte, whitespace included (shared/reference/templates.md)."""

from __future__ import annotations

import pytest

from services.errors import InvalidInput
from services.registry import ModelSpec, Side, load_presets
from services.templates import Template, resolve

WEB_SEARCH = "Instruct: Given a web search query, retrieve relevant passages that answer the query"


def spec(preset: str, **extra: object) -> ModelSpec:
    return ModelSpec(
        name="m",
        modality="text",
        kind="text-encoder",
        dimension=8,
        source={"type": "path", "path": "x"},
        templates=load_presets()[preset]["templates"],
        **extra,
    )


@pytest.mark.parametrize(
    ("preset", "task", "text", "want"),
    [
        ("plain", "retrieval.query", "hi", "hi"),
        ("e5", "retrieval.query", "how to bake", "query: how to bake"),
        ("e5", "retrieval.passage", "Bake at 200C.", "passage: Bake at 200C."),
        ("e5", "sts", "a", "query: a"),
        (
            "qwen3",
            "retrieval.query",
            "What is AI?",
            WEB_SEARCH + "\nQuery:What is AI?",
        ),
        (
            "e5-instruct",
            "retrieval.query",
            "What is AI?",
            WEB_SEARCH + "\nQuery: What is AI?",
        ),
        ("qwen3", "retrieval.passage", "doc", "doc"),
        ("bge-en", "retrieval.query", "q", "Represent this sentence for searching relevant passages: q"),
        ("nomic", "clustering", "c", "clustering: c"),
        ("jina-v3", "retrieval.passage", "d", "Represent the document for retrieval: d"),
    ],
)
def test_text_presets(preset: str, task: str, text: str, want: str) -> None:
    assert resolve(spec(preset), task).render(text=text) == want


def test_vlm2vec_placeholders_and_trailing_newline() -> None:
    s = spec("vlm2vec")
    t = resolve(s, "vqa.query")
    assert t.render(text="What is in the image", image="<|image_pad|>") == (
        "<|image_pad|>\nRepresent the given image with the following question: What is in the image\n"
    )
    assert resolve(s, "retrieval.passage").render(image="<|image_pad|>") == (
        "<|image_pad|>\nRepresent the given image.\n"
    )
    assert resolve(s, "video_retrieval.passage").render(video="<|video_pad|>") == (
        "<|video_pad|> Understand the content of the provided video."
    )
    assert t.slots == {"image", "text"}


def test_side_defaults_and_task_label() -> None:
    s = spec("e5")
    assert resolve(s, "retrieval", Side.document).task == "retrieval.passage"
    assert resolve(s, "retrieval.document").render(text="x") == "passage: x"
    assert resolve(s, None).task == "default.query"


def test_instruction_override() -> None:
    s = spec("e5")
    assert resolve(s, "retrieval.query", instruction="Find: ").render(text="x") == "Find: x"
    assert resolve(s, None, instruction="<{text}>").render(text="x") == "<x>"
    assert resolve(s, None, instruction="x").task == "instruction"


def test_literal_braces_kept() -> None:
    assert Template("t", "{json: {text}} {other}").render(text="v") == "{json: v} {other}"


def test_unknown_task_and_side() -> None:
    with pytest.raises(InvalidInput) as err:
        resolve(spec("e5"), "summarize")
    assert err.value.field == "task" and "retrieval.query" in err.value.message
    with pytest.raises(InvalidInput):
        resolve(spec("e5"), "retrieval.sideways")
