from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from gateway.clients.arrays import ArrayRequest
from gateway.clients.batchkeys import array_key
from gateway.codecs.v2 import (
    V2_TO_NUMPY,
    check_tensor_limits,
    format_infer_response,
    parse_infer_request,
    v2_datatype,
)
from gateway.errors import InvalidInput
from servekit_protocol.errors import InvalidArgument
from servekit_protocol.tensor_limits import TensorLimits


@pytest.mark.parametrize(
    ("datatype", "data", "expected"),
    [
        ("BOOL", [True, False], np.array([True, False])),
        ("UINT8", [0, 255], np.array([0, 255], dtype=np.uint8)),
        ("INT8", [-128, 127], np.array([-128, 127], dtype=np.int8)),
        ("INT16", [1, 2], np.array([1, 2], dtype=np.int16)),
        ("INT32", [1, 2], np.array([1, 2], dtype=np.int32)),
        ("INT64", [2**40, 2], np.array([2**40, 2], dtype=np.int64)),
        ("UINT16", [1, 2], np.array([1, 2], dtype=np.uint16)),
        ("UINT32", [1, 2], np.array([1, 2], dtype=np.uint32)),
        ("UINT64", [2**63, 2], np.array([2**63, 2], dtype=np.uint64)),
        ("FP16", [0.5, 1.5], np.array([0.5, 1.5], dtype=np.float16)),
        ("FP32", [0.5, 1.5], np.array([0.5, 1.5], dtype=np.float32)),
        ("FP64", [0.5, 1.5], np.array([0.5, 1.5], dtype=np.float64)),
    ],
)
def test_every_numeric_datatype_round_trips(
    datatype: str, data: list[Any], expected: np.ndarray[Any, Any]
) -> None:
    parsed = parse_infer_request(
        {"inputs": [{"name": "x", "shape": [2], "datatype": datatype, "data": data}]}
    )
    array = parsed.inputs["x"]
    assert array.dtype == expected.dtype
    np.testing.assert_array_equal(array, expected)
    body = format_infer_response("m", "1", {"y": array})
    assert body["outputs"][0] == {
        "name": "y",
        "datatype": datatype,
        "shape": [2],
        "data": data,
    }


def test_nested_and_flat_data_give_the_same_tensor() -> None:
    flat = parse_infer_request(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [2, 3],
                    "datatype": "FP32",
                    "data": [1, 2, 3, 4, 5, 6],
                }
            ]
        }
    )
    nested = parse_infer_request(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [2, 3],
                    "datatype": "FP32",
                    "data": [[1, 2, 3], [4, 5, 6]],
                }
            ]
        }
    )
    np.testing.assert_array_equal(flat.inputs["x"], nested.inputs["x"])
    assert flat.inputs["x"].shape == (2, 3)


def test_bytes_are_utf8_text_and_binary_stays_b64() -> None:
    parsed = parse_infer_request(
        {
            "inputs": [
                {
                    "name": "t",
                    "shape": [2],
                    "datatype": "BYTES",
                    "data": ["héllo", {"b64": "AP8="}],
                }
            ]
        }
    )
    assert parsed.inputs["t"].tolist() == ["héllo".encode(), b"\x00\xff"]
    out = format_infer_response("m", "1", {"t": parsed.inputs["t"]})["outputs"][0]
    assert out["datatype"] == "BYTES"
    assert out["data"] == ["héllo", {"b64": "AP8="}]


def test_the_limit_check_hands_its_count_to_the_merge_key() -> None:
    parsed = parse_infer_request(
        {
            "inputs": [
                {
                    "name": "t",
                    "shape": [2, 2],
                    "datatype": "BYTES",
                    "data": ["héllo", "", {"b64": "AP8="}, "abc"],
                },
                {"name": "x", "shape": [2, 3], "datatype": "UINT8", "data": [1] * 6},
            ]
        }
    )
    # A reference (8 bytes) per string besides its UTF-8 bytes, as the request
    # limit counts them; then six uint8 values.
    counted = (4 + 6, 4 * 8 + (6 + 0 + 2 + 3) + 6)
    assert check_tensor_limits(parsed, TensorLimits(10, 49)) == counted
    for tight in (TensorLimits(9, 49), TensorLimits(10, 48)):
        with pytest.raises(InvalidArgument):
            check_tensor_limits(parsed, tight)
    carried = ArrayRequest(parsed.inputs, size=counted)
    walked = ArrayRequest(parsed.inputs)
    assert array_key(carried) == array_key(walked)
    # The key takes the carried count as it is: the strings are not walked again.
    stated = array_key(ArrayRequest(parsed.inputs, size=(1, 2)))
    assert stated is not None and (stated.elements, stated.nbytes) == (1, 2)
    keyed = array_key(carried.copy())
    assert keyed is not None and (keyed.rows, keyed.elements, keyed.nbytes) == (
        2,
        *counted,
    )


def test_outputs_id_and_parameters_are_kept() -> None:
    parsed = parse_infer_request(
        {
            "id": "abc",
            "parameters": {"signature_name": "s"},
            "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
            "outputs": [{"name": "y"}],
        }
    )
    assert parsed.request_id == "abc"
    assert parsed.outputs == ["y"]
    assert parsed.parameters == {"signature_name": "s"}
    assert format_infer_response("m", "2", {}, parsed.request_id)["id"] == "abc"


def test_signature_dtype_converts_numeric_inputs() -> None:
    parsed = parse_infer_request(
        {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.5]}]},
        wanted={"x": np.dtype(np.float64)},
    )
    assert parsed.inputs["x"].dtype == np.float64


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "non-empty list"),
        ({"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]}, "name"),
        (
            {"inputs": [{"name": "x", "shape": [1], "datatype": "FP8", "data": [1]}]},
            "unsupported datatype",
        ),
        (
            {
                "inputs": [
                    {"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2]}
                ]
            },
            "needs 3 values",
        ),
        (
            {"inputs": [{"name": "x", "shape": [-1], "datatype": "FP32", "data": [1]}]},
            "non-negative",
        ),
        (
            {
                "inputs": [
                    {"name": "x", "shape": [1], "datatype": "INT32", "data": [1.5]}
                ]
            },
            "integers",
        ),
        (
            {
                "inputs": [
                    {"name": "x", "shape": [1], "datatype": "FP32", "data": ["a"]}
                ]
            },
            "does not fit",
        ),
        (
            {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]},
            "missing 'data'",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [2],
                        "datatype": "FP32",
                        "data": [[1], [2, 3]],
                    }
                ]
            },
            "does not fit",
        ),
        (
            {
                "inputs": [
                    {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]},
                    {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]},
                ]
            },
            "twice",
        ),
    ],
)
def test_invalid_requests_are_400(body: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_infer_request(body)


def test_datatype_table_is_a_bijection() -> None:
    for name, dtype in V2_TO_NUMPY.items():
        assert v2_datatype(dtype) == name
