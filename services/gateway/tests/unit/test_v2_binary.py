from __future__ import annotations

import gzip
import json
import struct
import zlib
from typing import Any

import numpy as np
import pytest
from gateway.codecs.v2 import parse_infer_request
from gateway.codecs.v2_binary import (
    MIN_COMPRESSED_BYTES,
    compress,
    encode_body,
    format_outputs,
    response_coding,
    split_body,
)
from gateway.codecs.v2_classification import classify
from gateway.errors import InvalidInput


def _binary_request(
    header: dict[str, Any], *parts: bytes
) -> tuple[dict[str, Any], bytes]:
    """What tritonclient sends: JSON, then each binary input's bytes in order."""
    text = json.dumps(header).encode()
    json_part, binary = split_body(b"".join([text, *parts]), str(len(text)))
    assert binary is not None
    return json.loads(json_part), binary


def test_binary_and_json_inputs_mix_in_input_order() -> None:
    floats = np.array([[1.5, 2.5], [3.5, 4.5]], dtype=np.float32)
    words = b"\x03\x00\x00\x00abc\x00\x00\x00\x00"
    header, binary = _binary_request(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [2, 2],
                    "parameters": {"binary_data_size": 16},
                },
                {"name": "n", "datatype": "INT64", "shape": [1], "data": [7]},
                {
                    "name": "s",
                    "datatype": "BYTES",
                    "shape": [2],
                    "parameters": {"binary_data_size": len(words)},
                },
            ]
        },
        floats.tobytes(),
        words,
    )
    parsed = parse_infer_request(header, None, binary)
    np.testing.assert_array_equal(parsed.inputs["x"], floats)
    assert parsed.inputs["n"].tolist() == [7]
    assert parsed.inputs["s"].tolist() == [b"abc", b""]


def test_binary_inputs_are_converted_to_the_models_dtype() -> None:
    header, binary = _binary_request(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [1],
                    "parameters": {"binary_data_size": 4},
                }
            ]
        },
        struct.pack("<f", 0.5),
    )
    parsed = parse_infer_request(header, {"x": np.dtype(np.float64)}, binary)
    assert parsed.inputs["x"].dtype == np.float64


@pytest.mark.parametrize(
    ("inputs", "binary", "message"),
    [
        (
            [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [2],
                    "parameters": {"binary_data_size": 8},
                }
            ],
            b"\x00" * 4,
            "runs past the end",
        ),
        (
            [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [1],
                    "parameters": {"binary_data_size": 4},
                }
            ],
            b"\x00" * 6,
            "2 binary bytes that no input",
        ),
        (
            [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [2],
                    "parameters": {"binary_data_size": 4},
                }
            ],
            b"\x00" * 4,
            "needs 8 bytes",
        ),
        (
            [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [1],
                    "data": [1],
                    "parameters": {"binary_data_size": 4},
                }
            ],
            b"\x00" * 4,
            "either 'data' or binary_data_size",
        ),
        (
            [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [1],
                    "parameters": {"binary_data_size": -1},
                }
            ],
            b"",
            "non-negative integer",
        ),
    ],
)
def test_inconsistent_binary_inputs_are_refused(
    inputs: list[dict[str, Any]], binary: bytes, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_infer_request({"inputs": inputs}, None, binary)


def test_binary_data_size_without_the_header_is_refused() -> None:
    inputs = [
        {
            "name": "x",
            "datatype": "FP32",
            "shape": [1],
            "parameters": {"binary_data_size": 4},
        }
    ]
    with pytest.raises(InvalidInput, match="Inference-Header-Content-Length"):
        parse_infer_request({"inputs": inputs})


@pytest.mark.parametrize("length", ["abc", "-1", "100"])
def test_a_bad_header_length_is_refused(length: str) -> None:
    with pytest.raises(InvalidInput, match="Inference-Header-Content-Length"):
        split_body(b"{}" * 10, length)


def test_without_the_header_the_whole_body_is_json() -> None:
    assert split_body(b"{}", None) == (b"{}", None)


def test_outputs_are_binary_when_asked_and_json_otherwise() -> None:
    parsed = parse_infer_request(
        {
            "inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [1]}],
            "outputs": [
                {"name": "scores", "parameters": {"binary_data": True}},
                {"name": "labels", "parameters": {"binary_data": False}},
                {"name": "names"},
            ],
        }
    )
    scores = np.array([[0.25, 0.75]], dtype=np.float32)
    entries, binaries = format_outputs(
        {
            "scores": scores,
            "labels": np.array([1], dtype=np.int64),
            "names": np.array([b"one"], dtype=object),
        },
        parsed,
    )
    assert entries == [
        {
            "name": "scores",
            "datatype": "FP32",
            "shape": [1, 2],
            "parameters": {"binary_data_size": 8},
        },
        {"name": "labels", "datatype": "INT64", "shape": [1], "data": [1]},
        {"name": "names", "datatype": "BYTES", "shape": [1], "data": ["one"]},
    ]
    assert binaries == [scores.tobytes()]
    body, header_length = encode_body(b'{"a":1}', binaries)
    assert header_length == 7
    assert body == b'{"a":1}' + scores.tobytes()
    assert encode_body(b"{}", []) == (b"{}", None)


def test_binary_data_output_makes_every_output_binary() -> None:
    parsed = parse_infer_request(
        {
            "inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [1]}],
            "parameters": {"binary_data_output": True},
        }
    )
    entries, binaries = format_outputs(
        {"names": np.array([b"ab", b"c"], dtype=object)}, parsed
    )
    assert entries[0]["parameters"] == {"binary_data_size": 11}
    assert binaries == [b"\x02\x00\x00\x00ab\x01\x00\x00\x00c"]


def test_classification_answers_the_top_classes() -> None:
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]], dtype=np.float32)
    top = classify(scores, 2, "p")
    assert top.shape == (2, 2)
    assert top.tolist() == [
        [b"0.700000:1", b"0.200000:2"],
        [b"0.500000:0", b"0.250000:1"],
    ]
    assert classify(np.array([3, 9]), 5, "p").tolist() == [b"9.000000:1", b"3.000000:0"]


def test_classification_of_text_is_refused() -> None:
    with pytest.raises(InvalidInput, match="numeric output"):
        classify(np.array([b"a"], dtype=object), 1, "p")


def test_classification_is_asked_per_output() -> None:
    parsed = parse_infer_request(
        {
            "inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [1]}],
            "outputs": [{"name": "p", "parameters": {"classification": 1}}],
        }
    )
    entries, _ = format_outputs({"p": np.array([[0.2, 0.8]])}, parsed)
    assert entries == [
        {"name": "p", "datatype": "BYTES", "shape": [1, 1], "data": ["0.800000:1"]}
    ]


@pytest.mark.parametrize("value", [-1, "3", True])
def test_a_bad_classification_count_is_refused(value: Any) -> None:
    with pytest.raises(InvalidInput, match="classification"):
        parse_infer_request(
            {
                "inputs": [
                    {"name": "x", "datatype": "INT32", "shape": [1], "data": [1]}
                ],
                "outputs": [{"name": "p", "parameters": {"classification": value}}],
            }
        )


@pytest.mark.parametrize(
    ("accept", "coding"),
    [
        ("gzip", "gzip"),
        ("deflate", "deflate"),
        ("br, gzip;q=0.5, deflate", "gzip"),
        ("gzip;q=0, deflate", "deflate"),
        ("gzip;q=0.0", None),
        ("identity", None),
        ("", None),
    ],
)
def test_answers_are_compressed_as_the_client_accepts(
    accept: str, coding: str | None
) -> None:
    assert response_coding(accept, MIN_COMPRESSED_BYTES) == coding


def test_small_answers_are_not_compressed() -> None:
    assert response_coding("gzip", MIN_COMPRESSED_BYTES - 1) is None


def test_compressed_answers_inflate_back() -> None:
    body = b'{"outputs": []}' * 100
    assert gzip.decompress(compress(body, "gzip")) == body
    assert zlib.decompress(compress(body, "deflate")) == body
