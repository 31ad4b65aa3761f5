"""The offline Qwen2 tokenizer.json: published ids, tiktoken parity on varied text, special tokens.

Golden ids come from transformers' own tests, which ran the published tokenizers:
- tests/models/qwen2/test_tokenization_qwen2.py `test_tokenizer_integration` (Qwen/Qwen-tokenizer, the
  Qwen2 vocabulary; huggingface/transformers commit 04bee35c8777d027a981e061f32fc12a1b3265d3);
- tests/models/qwen2_vl/test_modeling_qwen2_vl.py `Qwen2VLIntegrationTest.test_small_model_integration_test`
  (Qwen/Qwen2-VL-7B-Instruct's processor on its chat template: the first 17 ids).
"""

from __future__ import annotations

import json
import random

import pytest
import tiktoken
from tokenizers import Tokenizer

from tests.unit.trt_build.tiny_qwen_vl import hf_tokenizer, tokenizer_dir
from trt_build import qwen_tokenizer as qt

QWEN2_SEQUENCES = [
    "Transformers (formerly known as pytorch-transformers and pytorch-pretrained-bert) provides "
    "general-purpose architectures (BERT, GPT-2, RoBERTa, XLM, DistilBert, XLNet...) for Natural "
    "Language Understanding (NLU) and Natural Language Generation (NLG) with over 32+ pretrained "
    "models in 100+ languages and deep interoperability between Jax, PyTorch and TensorFlow.",
    "🤗 Transformers 提供了可以轻松地下载并且训练先进的预训练模型的 API 和工具。"
    "使用预训练模型可以减少计算消耗和碳排放，并且节省从头训练所需要的时间和资源。",
    '```python\ntokenizer = AutoTokenizer.from_pretrained("Qwen/Qwen-tokenizer")\n'
    'tokenizer("世界，你好！")```',
]
# fmt: off
QWEN2_IDS = [
    [8963, 388, 320, 69514, 3881, 438, 4510, 27414, 32852, 388, 323, 4510, 27414, 21334, 35722, 1455, 529, 8,
     5707, 4586, 58238, 77235, 320, 61437, 11, 479, 2828, 12, 17, 11, 11830, 61437, 64, 11, 1599, 10994, 11,
     27604, 321, 33, 529, 11, 29881, 6954, 32574, 369, 18448, 11434, 45451, 320, 45, 23236, 8, 323, 18448,
     11434, 23470, 320, 30042, 38, 8, 448, 916, 220, 18, 17, 10, 80669, 4119, 304, 220, 16, 15, 15, 10, 15459,
     323, 5538, 94130, 2897, 1948, 619, 706, 11, 5355, 51, 21584, 323, 94986, 13],
    [144834, 80532, 93685, 83744, 34187, 73670, 104261, 29490, 62189, 103937, 104034, 102830, 98841, 104034,
     104949, 9370, 5333, 58143, 102011, 1773, 37029, 98841, 104034, 104949, 73670, 101940, 100768, 104997,
     33108, 100912, 105054, 90395, 100136, 106831, 45181, 64355, 104034, 113521, 101975, 33108, 85329, 1773],
    [73594, 12669, 198, 85593, 284, 8979, 37434, 6387, 10442, 35722, 445, 48, 16948, 45274, 16948, 34841,
     3135, 1138, 85593, 445, 99489, 3837, 108386, 6313, 899, 73594],
]
QWEN2_VL_CHAT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "<|vision_start|><|image_pad|><|image_pad|>"
)
QWEN2_VL_CHAT_IDS = [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198,
                     151652, 151655, 151655]
# fmt: on
VLM2VEC_PROMPTS = [
    "<|image_pad|>\nRepresent the given image with the following question: What is this?\n",
    "<|image_pad|> Represent the given image.",
    "Find me an everyday image that matches the given caption: A man riding a horse on the beach.",
    "<|video_pad|> Understand the content of the provided video.",
    "<|image_pad|> Given an image, find a similar everyday image with the described changes: make it blue",
]
VARIED = [
    "Hello world!!!  Multiple   spaces\tand\ttabs\n\n\nnewlines\r\nCRLF",
    "x = 12345678901234567890; y = 3.14159e-10 # numbers split digit by digit",
    "def f(a, b):\n    return {'k': [a**2, b // 3]}  # code\n\n\n",
    "I'LL tell you WHAT'S up, they'd've DONE it",
    "Ünïcödé naïve café — “quotes” ‘single’ … ½ ² № ™",
    "日本語のテキストと한국어 텍스트 and русский текст, עברית, العربية",
    "emoji 👩‍👩‍👧‍👦 🇺🇳 🤖🤖🤖 mixed",
    "   leading and trailing whitespace   ",
    "\n\n\n",
    "<|im_start|>user\nwith specials inline<|im_end|><|endoftext|>",
    "a<|image_pad|>b<|video_pad|>c<|vision_start|><|vision_end|>",
    "",
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.from_file(str(tokenizer_dir() / "tokenizer.json"))


@pytest.fixture(scope="module")
def reference() -> tiktoken.Encoding:
    """tiktoken over the same ranks and special tokens: the encoder qwen_tokenizer itself wraps."""
    specials = {t: i for i, t, _ in qt.special_tokens("qwen2-vl")}
    return tiktoken.Encoding(
        "qwen2-vl", pat_str=qt.PRETOKENIZE_REGEX, mergeable_ranks=qt.load_ranks(), special_tokens=specials
    )


@pytest.mark.parametrize("index", range(3))
def test_published_qwen2_ids(tok: Tokenizer, index: int) -> None:
    assert tok.encode(QWEN2_SEQUENCES[index]).ids == QWEN2_IDS[index]


def test_published_qwen2_vl_chat_ids(tok: Tokenizer) -> None:
    assert tok.encode(QWEN2_VL_CHAT).ids == QWEN2_VL_CHAT_IDS


def test_vlm2vec_prompts(tok: Tokenizer, reference: tiktoken.Encoding) -> None:
    assert tok.encode(VLM2VEC_PROMPTS[0]).ids == [
        151655, 198, 65743, 279, 2661, 2168, 448, 279, 2701, 3405, 25, 3555, 374, 419, 5267,
    ]  # fmt: skip
    for text in VLM2VEC_PROMPTS:
        assert tok.encode(text).ids == reference.encode(text, allowed_special="all"), text


@pytest.mark.parametrize("text", VARIED)
def test_matches_tiktoken(tok: Tokenizer, reference: tiktoken.Encoding, text: str) -> None:
    ids = tok.encode(text).ids
    assert ids == reference.encode(text, allowed_special="all")
    assert tok.decode(ids, skip_special_tokens=False) == text


def test_matches_tiktoken_on_random_text(tok: Tokenizer, reference: tiktoken.Encoding) -> None:
    """Random strings over a pool that stresses the regex: letters, digits, marks, spaces, CJK, emoji."""
    pool = [*"abcXYZ019 '\n\t\r.,;:-_()[]{}#@", "ö", "é", "ß", "中", "文", "😀", "’", "\u00a0", "  ", "'s"]
    rng = random.Random(7)
    texts = ["".join(rng.choice(pool) for _ in range(rng.randint(1, 60))) for _ in range(300)]
    mismatches = [t for t in texts if tok.encode(t).ids != reference.encode(t, allowed_special="all")]
    assert not mismatches, mismatches[:3]


def test_nfc_normalization(tok: Tokenizer) -> None:
    """The same three characters transformers' Qwen2 test uses: only NFC is applied."""
    assert tok.normalizer.normalize_str("\u03d2\u0301\u03d2\u0308\u017f\u0307") == "\u03d3\u03d4\u1e9b"


@pytest.mark.parametrize(("family", "extra"), [("qwen2-vl", 0), ("qwen2.5-vl", 8), ("qwen3-vl", 12)])
def test_special_tokens_at_real_ids(family: str, extra: int) -> None:
    tokens = qt.special_tokens(family)
    assert [i for i, _, _ in tokens] == list(range(151643, 151657 + extra))
    assert dict((t, i) for i, t, _ in tokens)["<|image_pad|>"] == 151655
    assert dict((t, i) for i, t, _ in tokens)["<|video_pad|>"] == 151656
    if extra:
        tok = Tokenizer.from_file(str(tokenizer_dir(family) / "tokenizer.json"))
        assert tok.encode("<tool_call>").ids == [151657]


def test_transformers_loads_the_folder(tok: Tokenizer) -> None:
    hf = hf_tokenizer()
    for text in VLM2VEC_PROMPTS + VARIED[:4]:
        assert hf(text)["input_ids"] == tok.encode(text).ids
    assert hf.pad_token_id == 151643 and hf.convert_tokens_to_ids("<|image_pad|>") == 151655


def test_merges_cover_every_token() -> None:
    """Every multi-byte token has exactly one merge, from two lower-ranked tokens, in rank order."""
    model = json.loads((tokenizer_dir() / "tokenizer.json").read_text())["model"]
    vocab, merges = model["vocab"], [m.split(" ") if isinstance(m, str) else m for m in model["merges"]]
    assert len(vocab) == qt.QWEN2_VOCAB and len(merges) == qt.QWEN2_VOCAB - 256
    made = [vocab[a + b] for a, b in merges]
    assert made == sorted(made) == list(range(256, qt.QWEN2_VOCAB))
    assert all(vocab[a] < r and vocab[b] < r for (a, b), r in zip(merges, made, strict=True))
