"""Output encodings: int8/uint8 scalar quantization from calibrated ranges, binary/ubinary sign bits, their
base64 wire form, and reranker score activation. Known answers by hand, and bit-for-bit equality with
sentence-transformers' quantize_embeddings (the convention Cohere's embedding_types share)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sentence_transformers.util.quantization import quantize_embeddings

from services.vectors import (
    QuantRanges,
    activate_scores,
    calibrate,
    decode_base64,
    encode_base64,
    quantize,
    to_base64,
)

RNG = np.random.default_rng(7)


def test_binary_known_answer() -> None:
    v = np.array([[0.5, -0.2, 0.0, 1.0, -1.0, 0.1, 0.3, -0.4, 0.9]], dtype=np.float32)
    # bits of v > 0 (zero is 0), first dimension in the high bit, the last byte padded with zeros
    assert quantize(v, None, "ubinary").tolist() == [[0b10010110, 0b10000000]]
    assert quantize(v, None, "binary").tolist() == [[0b10010110 - 128, 0]]
    assert quantize(v, None, "binary").dtype == np.int8 and quantize(v, None, "ubinary").dtype == np.uint8


def test_scalar_known_answer() -> None:
    ranges = QuantRanges(np.array([0.0, -1.0, 0.3], np.float32), np.array([1.0, 1.0, 0.3], np.float32), 2)
    v = np.array([[0.5, 0.0, 0.3], [2.0, -3.0, 5.0], [0.0, 1.5, 0.0]], dtype=np.float32)
    # step (high - low) / 255, floor, clip to 0..255; a constant dimension gets step 1. (In float32 a value
    # exactly at `high` can land in bucket 254, as in sentence-transformers: hence 1.5, not 1.0.)
    assert quantize(v, ranges, "uint8").tolist() == [[127, 127, 0], [255, 0, 4], [0, 255, 0]]
    assert quantize(v, ranges, "int8").tolist() == [[-1, -1, -128], [127, -128, -124], [-128, 127, -128]]


@pytest.mark.parametrize("dim", [384, 13])
@pytest.mark.parametrize("kind", ["int8", "uint8", "binary", "ubinary"])
def test_matches_sentence_transformers(kind: str, dim: int) -> None:
    sample = RNG.standard_normal((200, dim)).astype(np.float32)
    vectors = RNG.standard_normal((50, dim)).astype(np.float32) * 1.3  # some fall outside the ranges
    ranges = calibrate(sample)
    want = quantize_embeddings(vectors, kind, calibration_embeddings=sample)
    got = quantize(vectors, ranges, kind)
    assert got.dtype == want.dtype and np.array_equal(got, want)
    if kind.endswith("int8"):
        assert np.array_equal(got, quantize_embeddings(vectors, kind, ranges=ranges.as_array()))


def test_ranges_serialize_exactly() -> None:
    ranges = calibrate(RNG.standard_normal((100, 7)).astype(np.float32))
    back = QuantRanges.from_dict(json.loads(json.dumps(ranges.to_dict())))
    assert np.array_equal(back.as_array(), ranges.as_array()) and back.count == 100
    assert back.as_array().dtype == np.float32 and back.as_array().shape == (2, 7)
    with pytest.raises(ValueError, match="low <= high"):
        QuantRanges.from_dict({"low": [1.0], "high": [0.0]})


def test_calibration_and_quantization_refuse_what_cannot_work() -> None:
    with pytest.raises(ValueError, match="at least two"):
        calibrate(np.ones((1, 4), np.float32))
    with pytest.raises(ValueError, match="at least two"):
        calibrate(np.array([[0.0, np.nan], [1.0, 2.0]]))
    v = np.ones((2, 4), np.float32)
    with pytest.raises(ValueError, match="got none"):
        quantize(v, None, "int8")
    with pytest.raises(ValueError, match="got 3 dimensions"):
        quantize(v, calibrate(np.eye(3, dtype=np.float32)), "uint8")
    with pytest.raises(ValueError, match="unknown encoding"):
        quantize(v, None, "int4")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "values", "text"),
    [
        ("int8", np.array([-128, 0, 127], np.int8), "gAB/"),
        ("binary", np.array([-128, 0, 127], np.int8), "gAB/"),
        ("uint8", np.array([255, 0, 1], np.uint8), "/wAB"),
        ("ubinary", np.array([255, 0, 1], np.uint8), "/wAB"),
        ("float", np.array([1.0, -2.5, 0.125], np.float32), "AACAPwAAIMAAAAA+"),
    ],
)
def test_base64_per_encoding(kind: str, values: np.ndarray, text: str) -> None:
    assert encode_base64(values, kind) == text  # type: ignore[arg-type]
    back = decode_base64(text, kind)  # type: ignore[arg-type]
    assert back.dtype == values.dtype and np.array_equal(back, values)


def test_base64_float_is_the_openai_form_and_refuses_unquantized() -> None:
    v = RNG.standard_normal(5)
    assert encode_base64(v) == to_base64(v)
    with pytest.raises(ValueError, match="quantize first"):
        encode_base64(v, "int8")


def test_score_activation() -> None:
    import torch

    logits = np.array([[0.0], [2.0], [-1000.0], [1000.0], [-3.5]], dtype=np.float32)  # Triton's [n, 1]
    assert activate_scores(logits, "none").tolist() == logits.reshape(-1).tolist()
    got = activate_scores(logits, "sigmoid")
    want = torch.sigmoid(torch.from_numpy(logits.reshape(-1))).numpy()
    assert got.shape == (5,) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert got[0] == 0.5 and got[2] == 0.0 and got[3] == 1.0
