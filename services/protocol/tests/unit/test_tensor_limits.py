"""The per-request cap on tensor elements and bytes, from declared shapes."""

from __future__ import annotations

import numpy as np
import pytest
from servekit_protocol import json_codec, messages, tensors
from servekit_protocol.errors import InvalidArgument
from servekit_protocol.json_codec import TensorSpec
from servekit_protocol.tensor_limits import (
    TensorLimits,
    check_tensor_protos,
    declared_size,
    decode_tensor_protos,
)


def _filled(elements: int, dtype: int = messages.DT_FLOAT) -> messages.TensorProto:
    # One value and a large shape: TensorFlow's fill rule expands it.
    tensor = messages.TensorProto(dtype=dtype)
    tensor.tensor_shape.dim.add(size=elements)
    if dtype == messages.DT_STRING:
        tensor.string_val.append(b"ab")
    else:
        tensor.float_val.append(1.0)
    return tensor


def test_four_filled_tensors_are_refused_together() -> None:
    request = messages.PredictRequest()
    for name in "abcd":
        request.inputs[name].CopyFrom(_filled(1 << 24))
    # The message is tiny; what it declares is 2^26 elements, 256 MiB.
    assert request.ByteSize() < 160
    with pytest.raises(InvalidArgument, match="67108864 elements"):
        check_tensor_protos(request.inputs.values(), TensorLimits())
    check_tensor_protos(list(request.inputs.values())[:2], TensorLimits())


def test_bytes_count_the_dtype_and_string_values() -> None:
    assert declared_size(_filled(10)) == (10, 40)
    assert declared_size(_filled(10, messages.DT_DOUBLE)) == (10, 80)
    assert declared_size(_filled(10, messages.DT_STRING)) == (10, 82)
    with pytest.raises(InvalidArgument, match="bytes"):
        check_tensor_protos([_filled(100)], TensorLimits(max_bytes=399))


def test_malformed_shapes_are_refused() -> None:
    tensor = messages.TensorProto(dtype=messages.DT_FLOAT)
    tensor.tensor_shape.dim.add(size=-2)
    with pytest.raises(InvalidArgument, match="negative"):
        declared_size(tensor)
    tensor = messages.TensorProto(dtype=messages.DT_FLOAT)
    tensor.tensor_shape.unknown_rank = True
    with pytest.raises(InvalidArgument, match="unknown rank"):
        declared_size(tensor)


def test_a_repeated_shape_is_judged_as_the_first_time() -> None:
    # The shapes are cached by their bytes: a repeat gives the same size, and a
    # malformed shape is refused every time, never cached.
    for _ in range(2):
        assert declared_size(_filled(7)) == (7, 28)
        tensor = messages.TensorProto(dtype=messages.DT_FLOAT)
        tensor.tensor_shape.dim.add(size=3)
        tensor.tensor_shape.dim.add(size=-1)
        with pytest.raises(InvalidArgument, match=r"negative dimension: \[3, -1\]"):
            declared_size(tensor)
    empty = messages.TensorProto(dtype=messages.DT_FLOAT)
    assert tensors.declared_shape(empty) == ((), 1)  # a scalar
    assert declared_size(empty) == (1, 4)


def test_decoding_checks_every_shape_before_any_tensor_is_decoded() -> None:
    # The last tensor's shape is malformed and the first one's values do not
    # fit its shape: the shape is what is refused, as no tensor is decoded
    # before every shape has been read.
    bad_values = messages.TensorProto(dtype=messages.DT_FLOAT)
    bad_values.tensor_shape.dim.add(size=1)
    bad_values.float_val.extend([1.0, 2.0])
    bad_shape = messages.TensorProto(dtype=messages.DT_FLOAT)
    bad_shape.tensor_shape.dim.add(size=-1)
    with pytest.raises(InvalidArgument, match="negative"):
        decode_tensor_protos([("a", bad_values), ("b", bad_shape)], None)
    over = [(name, _filled(1 << 24)) for name in "abc"] + [("d", bad_values)]
    with pytest.raises(InvalidArgument, match="50331649 elements"):
        decode_tensor_protos(over, TensorLimits())


def test_decoding_gives_what_each_tensor_decodes_to() -> None:
    named = [
        ("x", tensors.from_ndarray(np.arange(6.0).reshape(2, 3))),
        ("s", tensors.from_ndarray(np.array([b"a", b"bc"], dtype=object))),
        ("k", tensors.from_ndarray(np.array([[7]], dtype=np.int64), packed=True)),
        ("f", _filled(4)),
    ]
    decoded = decode_tensor_protos(named, TensorLimits(max_elements=13))
    assert list(decoded) == ["x", "s", "k", "f"]
    for name, tensor in named:
        expected = tensors.to_ndarray(tensor)
        assert decoded[name].dtype == expected.dtype
        np.testing.assert_array_equal(decoded[name], expected)
    with pytest.raises(InvalidArgument, match="13 elements"):
        decode_tensor_protos(named, TensorLimits(max_elements=12))
    with pytest.raises(InvalidArgument, match="has 2 values but shape"):
        bad = messages.TensorProto(dtype=messages.DT_FLOAT)
        bad.tensor_shape.dim.add(size=1)
        bad.float_val.extend([1.0, 2.0])
        decode_tensor_protos([*named, ("bad", bad)], None)


@pytest.mark.parametrize(
    "body",
    [
        b'{"instances": [[1, 2, 3], [4, 5, 6]]}',
        b'{"instances": [{"x": [1, 2, 3]}, {"x": [4, 5, 6]}]}',
        b'{"inputs": [[1, 2, 3], [4, 5, 6]]}',
        b'{"inputs": {"x": [[1, 2, 3], [4, 5, 6]]}}',
    ],
    ids=["rows", "row objects", "columns", "column object"],
)
def test_json_bodies_are_checked_before_conversion(body: bytes) -> None:
    specs = {"x": TensorSpec("float32")}
    limits = TensorLimits(max_elements=5)
    with pytest.raises(InvalidArgument, match="6 elements"):
        json_codec.parse_predict_request(body, specs, limits)
    parsed = json_codec.parse_predict_request(body, specs, TensorLimits(max_elements=6))
    assert parsed.inputs["x"].shape == (2, 3)


def test_json_nested_deeper_than_a_tensor_can_be_is_refused() -> None:
    specs = {"x": TensorSpec("float32")}
    body = b'{"instances": ' + b"[" * 900 + b"1" + b"]" * 900 + b"}"
    with pytest.raises(InvalidArgument, match="at most 64 dimensions"):
        json_codec.parse_predict_request(body, specs)
    too_deep = b'{"instances": ' + b"[" * 2000 + b"]" * 2000 + b"}"
    with pytest.raises(InvalidArgument, match="JSON Parse error"):
        json_codec.parse_predict_request(too_deep, specs)
