"""TensorProto <-> numpy conversions (no TensorFlow)."""

from typing import Any

import ml_dtypes
import numpy as np
import pytest
from servekit_protocol import messages, tensors
from servekit_protocol.errors import InvalidArgument

ROUND_TRIP_ARRAYS: list[np.ndarray[Any, Any]] = [
    np.array([[1.5, -2.25, 3.0]], dtype=np.float32),
    np.array([1e300, -0.0, 5.5], dtype=np.float64),
    np.array([0.5, -65504.0], dtype=np.float16),
    np.array([1.0, -3.5, 256.0], dtype=ml_dtypes.bfloat16),
    np.array([-128, 0, 127], dtype=np.int8),
    np.array([-32768, 32767], dtype=np.int16),
    np.array([[-(2**31)], [2**31 - 1]], dtype=np.int32),
    np.array([-(2**63), 2**63 - 1], dtype=np.int64),
    np.array([0, 255], dtype=np.uint8),
    np.array([0, 65535], dtype=np.uint16),
    np.array([0, 2**32 - 1], dtype=np.uint32),
    np.array([0, 2**64 - 1], dtype=np.uint64),
    np.array([True, False, True], dtype=np.bool_),
    np.array([1 + 2j, -3.5j], dtype=np.complex64),
    np.array([[1e200 + 1j]], dtype=np.complex128),
    np.array([1.0, -2.0], dtype=ml_dtypes.float8_e5m2),
    np.array([0.5, 2.0], dtype=ml_dtypes.float8_e4m3fn),
    np.array([-8, 7], dtype=ml_dtypes.int4),
    np.array([0, 15], dtype=ml_dtypes.uint4),
    np.zeros((2, 0, 3), dtype=np.float32),
    np.array(7, dtype=np.int64),
]


@pytest.mark.parametrize("packed", [False, True], ids=["typed", "packed"])
@pytest.mark.parametrize(
    "array", ROUND_TRIP_ARRAYS, ids=lambda a: f"{a.dtype}{a.shape}"
)
def test_round_trip_keeps_dtype_shape_and_values(
    array: np.ndarray[Any, Any], packed: bool
) -> None:
    proto = tensors.from_ndarray(array, packed=packed)
    wire = messages.TensorProto.FromString(proto.SerializeToString())
    decoded = tensors.to_ndarray(wire)
    assert decoded.dtype == array.dtype
    assert decoded.shape == array.shape
    assert decoded.tobytes() == array.tobytes()
    assert decoded.flags.writeable


# What TensorFlow's Tensor::AsProtoField writes for each dtype (tensor.cc's
# ProtoHelper specialisations), which TF Serving's Predict answers carry.
AS_PROTO_FIELD_CASES: list[tuple[Any, Any, str, list[Any] | bytes]] = [
    (np.array([[1.5, -2.0]], np.float32), None, "float_val", [1.5, -2.0]),
    (np.array([1e300, -0.5]), None, "double_val", [1e300, -0.5]),
    (np.array([-2.0, 1.0], np.float16), None, "half_val", [0xC000, 0x3C00]),
    (np.array([1.0, -1.0], ml_dtypes.bfloat16), None, "half_val", [0x3F80, 0xBF80]),
    (np.array([-128, 127], np.int8), None, "int_val", [-128, 127]),
    (np.array([-32768, 7], np.int16), None, "int_val", [-32768, 7]),
    (np.array([-(2**31), 5], np.int32), None, "int_val", [-(2**31), 5]),
    (np.array([0, 255], np.uint8), None, "int_val", [0, 255]),
    (np.array([65535], np.uint16), None, "int_val", [65535]),
    (np.array([-(2**63), 9], np.int64), None, "int64_val", [-(2**63), 9]),
    (np.array([2**32 - 1], np.uint32), None, "uint32_val", [2**32 - 1]),
    (np.array([2**64 - 1], np.uint64), None, "uint64_val", [2**64 - 1]),
    (np.array([True, False]), None, "bool_val", [True, False]),
    (np.array([1 + 2j, -3j], np.complex64), None, "scomplex_val", [1, 2, 0, -3]),
    (np.array([0.5 - 1j]), None, "dcomplex_val", [0.5, -1.0]),
    (np.array([-5, 3], np.int8), "qint8", "int_val", [-5, 3]),
    (np.array([200], np.uint8), "quint8", "int_val", [200]),
    (np.array([-300], np.int16), "qint16", "int_val", [-300]),
    (np.array([60000], np.uint16), "quint16", "int_val", [60000]),
    (np.array([-70000], np.int32), "qint32", "int_val", [-70000]),
    (np.array([-8, 7], ml_dtypes.int4), None, "int_val", [-8, 7]),
    (
        np.array([1.0, -2.0], ml_dtypes.float8_e5m2),
        None,
        "float8_val",
        np.array([1.0, -2.0], ml_dtypes.float8_e5m2).tobytes(),
    ),
    (np.array([b"a", b"\xff"], dtype=object), None, "string_val", [b"a", b"\xff"]),
]


@pytest.mark.parametrize(
    ("array", "dtype", "field", "expected"),
    AS_PROTO_FIELD_CASES,
    ids=[f"{c[1] or c[0].dtype}" for c in AS_PROTO_FIELD_CASES],
)
def test_default_encoding_is_tensorflows_as_proto_field(
    array: np.ndarray[Any, Any], dtype: Any, field: str, expected: list[Any] | bytes
) -> None:
    proto = tensors.from_ndarray(array, dtype)
    wire = messages.TensorProto.FromString(proto.SerializeToString())
    assert not wire.tensor_content
    written = getattr(wire, field)
    assert (written if isinstance(expected, bytes) else list(written)) == expected
    assert [f.name for f, _ in wire.ListFields()][-1] == field
    decoded = tensors.to_ndarray(wire)
    assert decoded.tobytes() == array.astype(decoded.dtype).tobytes()


def test_typed_encoding_of_non_contiguous_and_big_endian_arrays() -> None:
    transposed = np.arange(6, dtype=">f4").reshape(2, 3).T
    proto = tensors.from_ndarray(transposed)
    assert list(proto.float_val) == transposed.ravel().tolist()
    assert [dim.size for dim in proto.tensor_shape.dim] == [3, 2]
    np.testing.assert_array_equal(tensors.to_ndarray(proto), transposed)


def test_packed_numeric_tensors_use_tensor_content() -> None:
    proto = tensors.from_ndarray(np.arange(4, dtype=np.float32), packed=True)
    assert proto.dtype == messages.DT_FLOAT
    assert proto.tensor_content == np.arange(4, dtype="<f4").tobytes()
    assert not proto.float_val


def test_big_endian_input_is_written_little_endian() -> None:
    array = np.array([1, 2], dtype=">i4")
    proto = tensors.from_ndarray(array, packed=True)
    assert proto.tensor_content == np.array([1, 2], dtype="<i4").tobytes()
    np.testing.assert_array_equal(tensors.to_ndarray(proto), [1, 2])


def test_strings_round_trip_as_bytes() -> None:
    proto = tensors.from_ndarray(np.array([["a", "é"], ["", "z"]]))
    assert proto.dtype == messages.DT_STRING
    assert list(proto.string_val) == [b"a", "é".encode(), b"", b"z"]
    decoded = tensors.to_ndarray(proto)
    assert decoded.dtype == object
    assert decoded.tolist() == [[b"a", "é".encode()], [b"", b"z"]]


def test_object_array_of_bytes_and_str() -> None:
    proto = tensors.from_ndarray(np.array([b"\xff\x00", "x"], dtype=object))
    assert list(proto.string_val) == [b"\xff\x00", b"x"]


def test_object_array_with_numbers_is_rejected() -> None:
    with pytest.raises(InvalidArgument, match="DT_STRING"):
        tensors.from_ndarray(np.array([b"a", 3], dtype=object))


def test_explicit_dtype_casts() -> None:
    proto = tensors.from_ndarray([1, 2, 3], dtype="float32")
    assert proto.dtype == messages.DT_FLOAT
    np.testing.assert_array_equal(
        tensors.to_ndarray(proto), np.array([1, 2, 3], np.float32)
    )
    proto = tensors.from_ndarray([1, 2], dtype=messages.DT_HALF)
    assert tensors.to_ndarray(proto).dtype == np.float16
    proto = tensors.from_ndarray(["x"], dtype="DT_STRING")
    assert list(proto.string_val) == [b"x"]


def test_into_fills_a_map_entry() -> None:
    response = messages.PredictResponse()
    response.outputs["y"].float_val.append(9.0)
    response.outputs["y"].tensor_content = b"\0" * 8
    tensors.from_ndarray(np.array([1.0, 2.0], np.float32), into=response.outputs["y"])
    assert list(response.outputs["y"].float_val) == [1.0, 2.0]
    assert not response.outputs["y"].tensor_content
    np.testing.assert_array_equal(tensors.to_ndarray(response.outputs["y"]), [1.0, 2.0])


def _proto(dtype: int, shape: list[int], **fields: Any) -> messages.TensorProto:
    proto = messages.TensorProto(dtype=dtype)  # type: ignore[arg-type]
    proto.tensor_shape.CopyFrom(tensors.from_shape(shape))
    for name, values in fields.items():
        if isinstance(values, bytes):
            setattr(proto, name, values)
        else:
            getattr(proto, name).extend(values)
    return proto


@pytest.mark.parametrize(
    ("dtype", "field", "values", "expected"),
    [
        (messages.DT_FLOAT, "float_val", [1.5, 2.5], np.array([1.5, 2.5], np.float32)),
        (messages.DT_DOUBLE, "double_val", [0.1, 0.2], np.array([0.1, 0.2])),
        (messages.DT_INT32, "int_val", [-1, 5], np.array([-1, 5], np.int32)),
        (messages.DT_INT16, "int_val", [-300, 5], np.array([-300, 5], np.int16)),
        (messages.DT_INT8, "int_val", [-1, 100], np.array([-1, 100], np.int8)),
        (messages.DT_UINT8, "int_val", [0, 255], np.array([0, 255], np.uint8)),
        (messages.DT_UINT16, "int_val", [0, 65535], np.array([0, 65535], np.uint16)),
        (messages.DT_INT64, "int64_val", [-(2**40), 3], np.array([-(2**40), 3])),
        (
            messages.DT_UINT32,
            "uint32_val",
            [2**32 - 1, 0],
            np.array([2**32 - 1, 0], np.uint32),
        ),
        (
            messages.DT_UINT64,
            "uint64_val",
            [2**64 - 1, 1],
            np.array([2**64 - 1, 1], np.uint64),
        ),
        (messages.DT_BOOL, "bool_val", [True, False], np.array([True, False])),
        (
            messages.DT_STRING,
            "string_val",
            [b"a", b"b"],
            np.array([b"a", b"b"], dtype=object),
        ),
        (
            messages.DT_COMPLEX64,
            "scomplex_val",
            [1.0, 2.0, 3.0, 4.0],
            np.array([1 + 2j, 3 + 4j], np.complex64),
        ),
        (
            messages.DT_COMPLEX128,
            "dcomplex_val",
            [1.0, -1.0, 0.5, 0.0],
            np.array([1 - 1j, 0.5], np.complex128),
        ),
        (
            messages.DT_HALF,
            "half_val",
            np.array([1.0, -2.5], np.float16).view(np.uint16).tolist(),
            np.array([1.0, -2.5], np.float16),
        ),
        (
            messages.DT_BFLOAT16,
            "half_val",
            np.array([1.0, -2.5], ml_dtypes.bfloat16).view(np.uint16).tolist(),
            np.array([1.0, -2.5], ml_dtypes.bfloat16),
        ),
    ],
)
def test_typed_fields_are_read(
    dtype: int, field: str, values: list[Any], expected: np.ndarray[Any, Any]
) -> None:
    decoded = tensors.to_ndarray(_proto(dtype, [2], **{field: values}))
    assert decoded.dtype == expected.dtype
    assert decoded.tolist() == expected.tolist()


def test_float8_val_bytes_are_read() -> None:
    expected = np.array([1.0, 2.0], ml_dtypes.float8_e5m2)
    decoded = tensors.to_ndarray(
        _proto(messages.DataType.DT_FLOAT8_E5M2, [2], float8_val=expected.tobytes())
    )
    assert decoded.tolist() == expected.tolist()


def test_a_single_value_fills_the_shape() -> None:
    decoded = tensors.to_ndarray(_proto(messages.DT_FLOAT, [2, 3], float_val=[1.5]))
    np.testing.assert_array_equal(decoded, np.full((2, 3), 1.5, np.float32))
    decoded = tensors.to_ndarray(_proto(messages.DT_STRING, [3], string_val=[b"x"]))
    assert decoded.tolist() == [b"x", b"x", b"x"]


def test_the_last_value_fills_the_rest() -> None:
    decoded = tensors.to_ndarray(_proto(messages.DT_INT32, [4], int_val=[1, 2]))
    assert decoded.tolist() == [1, 2, 2, 2]


def test_no_values_means_zeros() -> None:
    decoded = tensors.to_ndarray(_proto(messages.DT_INT64, [2]))
    assert decoded.tolist() == [0, 0]
    assert tensors.to_ndarray(_proto(messages.DT_STRING, [1])).tolist() == [b""]


def test_too_many_values_are_rejected() -> None:
    with pytest.raises(InvalidArgument, match="3 values but shape \\[2\\]"):
        tensors.to_ndarray(_proto(messages.DT_FLOAT, [2], float_val=[1, 2, 3]))


def test_wrong_content_length_is_rejected() -> None:
    proto = _proto(messages.DT_FLOAT, [3], tensor_content=b"\x00" * 8)
    with pytest.raises(InvalidArgument, match="needs 12"):
        tensors.to_ndarray(proto)


def test_fill_is_capped() -> None:
    proto = _proto(messages.DT_FLOAT, [1 << 20, 1 << 10], float_val=[1.0])
    with pytest.raises(InvalidArgument, match="Refusing to fill"):
        tensors.to_ndarray(proto)


def test_bad_shapes_are_rejected() -> None:
    with pytest.raises(InvalidArgument, match="negative"):
        tensors.to_ndarray(_proto(messages.DT_FLOAT, [-1], float_val=[1.0]))
    unknown = messages.TensorProto(dtype=messages.DT_FLOAT)
    unknown.tensor_shape.unknown_rank = True
    with pytest.raises(InvalidArgument, match="unknown rank"):
        tensors.to_ndarray(unknown)


def test_unsupported_dtypes_are_rejected() -> None:
    with pytest.raises(InvalidArgument, match="DT_VARIANT"):
        tensors.to_ndarray(_proto(messages.DT_VARIANT, [1]))
    with pytest.raises(InvalidArgument, match="Unsupported dtype"):
        tensors.from_ndarray(np.array(["2020-01-01"], dtype="datetime64[D]"))


def test_dtype_names() -> None:
    assert tensors.dtype_name(messages.DT_FLOAT) == "float32"
    assert tensors.dtype_name("DT_STRING") == "string"
    assert tensors.dtype_name(np.dtype(np.int16)) == "int16"
    assert tensors.dtype_name(np.float16) == "float16"
    assert tensors.dtype_name("float") == "float32"
    assert tensors.data_type("float64") == messages.DT_DOUBLE
    assert tensors.data_type(str) == messages.DT_STRING
    assert tensors.data_type_name("bool") == "DT_BOOL"
    assert tensors.numpy_dtype("bfloat16") == np.dtype(ml_dtypes.bfloat16)
    assert tensors.numpy_dtype("string") == np.dtype(object)
    with pytest.raises(InvalidArgument):
        tensors.data_type("float128x")


def test_shapes() -> None:
    proto = tensors.from_shape([None, 3, -1])
    assert [dim.size for dim in proto.dim] == [-1, 3, -1]
    assert tensors.to_shape(proto) == [-1, 3, -1]
    assert tensors.to_shape(tensors.from_shape(None)) is None
    assert tensors.to_shape(tensors.from_shape([])) == []
