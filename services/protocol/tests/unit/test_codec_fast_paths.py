"""Inputs at the edges of the codecs' fast paths answer as the general paths do."""

import numpy as np
import pytest
from servekit_protocol import json_codec, messages, tensors
from servekit_protocol.errors import InvalidArgument
from servekit_protocol.json_codec import TensorSpec


def _error(body: bytes, specs: dict[str, TensorSpec]) -> str:
    with pytest.raises(InvalidArgument) as caught:
        json_codec.parse_predict_request(body, specs)
    return caught.value.message


def test_row_of_an_input_named_b64_is_a_binary_value_not_an_object() -> None:
    specs = {"b64": TensorSpec("string")}
    body = b'{"instances": [{"b64": ["a"]}, {"b64": "aGk="}]}'
    assert _error(body, specs) == (
        "Expecting object but got list at item 1 of input list"
    )


def test_rows_after_the_first_are_checked_key_by_key() -> None:
    specs = {"a": TensorSpec("int64"), "b": TensorSpec("string")}
    body = b'{"instances": [{"a": 1, "b": "x"}, {"a": 2, "c": "y"}]}'
    assert _error(body, specs) == (
        "Failed to process element: 1 key: c of 'instances' list. Error: Invalid "
        "argument: JSON object: does not have named input: c"
    )


def test_narrow_integer_inputs_are_range_checked() -> None:
    specs = {"a": TensorSpec("int32")}
    assert _error(b'{"inputs": {"a": [1, 2147483648]}}', specs) == (
        "JSON Value: 2147483648 Type: Number is not of expected type: int32"
    )
    parsed = json_codec.parse_predict_request(b'{"inputs": {"a": [1, -7]}}', specs)
    assert parsed.inputs["a"].dtype == np.int32
    assert parsed.inputs["a"].tolist() == [1, -7]


def test_values_already_of_the_target_dtype_come_back_as_new_arrays() -> None:
    given = np.array([1.5, 2.5])
    converted = json_codec.to_array(given, TensorSpec("float64"))
    converted[0] = 9.0
    assert given[0] == 1.5


def test_a_text_column_with_a_number_names_the_number() -> None:
    specs = {"t": TensorSpec("DT_STRING")}
    assert _error(b'{"inputs": {"t": ["a", 3]}}', specs) == (
        "JSON Value: 3 Type: Number is not of expected type: string"
    )


def test_dtype_spellings_agree() -> None:
    for spelling in ("float32", "FLOAT32", "DT_FLOAT", "dt_float", "float", 1):
        assert tensors.dtype_name(spelling) == "float32"
        assert tensors.data_type(spelling) == messages.DT_FLOAT
    assert tensors.dtype_name(np.dtype(">f4")) == "float32"
    assert tensors.dtype_name(np.dtype("U3")) == "string"
    with pytest.raises(InvalidArgument, match="Unsupported dtype: True"):
        tensors.dtype_name(True)


def test_a_repeated_shape_is_validated_every_time() -> None:
    good = tensors.from_ndarray(np.zeros((2, 3), np.float32))
    for _ in range(2):
        assert tensors.to_ndarray(good).shape == (2, 3)
    bad = messages.TensorProto(dtype=messages.DT_FLOAT, float_val=[1.0])
    bad.tensor_shape.dim.add(size=-1)
    for _ in range(2):
        with pytest.raises(InvalidArgument, match="negative dimension"):
            tensors.to_ndarray(bad)


def test_a_scalar_tensor_has_no_shape_field() -> None:
    scalar = tensors.from_ndarray(np.float64(2.5))
    assert not scalar.HasField("tensor_shape")
    assert tensors.to_ndarray(scalar).shape == ()
    into = tensors.from_ndarray(np.zeros((4, 1)))
    tensors.from_ndarray(np.float32(1.0), into=into)
    assert not into.HasField("tensor_shape")


def test_big_endian_arrays_are_written_little_endian() -> None:
    array = np.arange(3, dtype=">i4")
    tensor = tensors.from_ndarray(array, packed=True)
    assert tensor.tensor_content == np.arange(3, dtype="<i4").tobytes()
    assert tensors.to_ndarray(tensor).tolist() == [0, 1, 2]
