from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest
from gateway.codecs.v2_datatypes import V2_TO_NUMPY
from gateway.codecs.v2_raw import from_raw, to_raw
from gateway.errors import InvalidInput

NUMERIC = [name for name in V2_TO_NUMPY if name != "BYTES"]


@pytest.mark.parametrize("datatype", NUMERIC)
def test_numeric_tensors_round_trip_little_endian(datatype: str) -> None:
    dtype = V2_TO_NUMPY[datatype]
    array = np.arange(6).astype(dtype).reshape(2, 3)
    name, raw = to_raw(array)
    assert name == datatype
    assert raw == array.astype(dtype.newbyteorder("<")).tobytes()
    decoded = from_raw(raw, datatype, (2, 3), "x")
    assert decoded.dtype == dtype
    np.testing.assert_array_equal(decoded, array)
    decoded[0, 0] = 1  # the decoded array is writable, not a view of the body


def test_big_endian_arrays_are_sent_little_endian() -> None:
    array = np.array([1.5, -2.0], dtype=">f8")
    _, raw = to_raw(array)
    assert raw == struct.pack("<2d", 1.5, -2.0)


def test_bytes_elements_are_length_prefixed() -> None:
    array = np.array([b"ab", b"", "h\u00e9"], dtype=object)
    datatype, raw = to_raw(array)
    assert datatype == "BYTES"
    assert (
        raw
        == b"\x02\x00\x00\x00ab" + b"\x00\x00\x00\x00" + b"\x03\x00\x00\x00h\xc3\xa9"
    )
    decoded = from_raw(raw, "BYTES", (3,), "s")
    assert decoded.tolist() == [b"ab", b"", "h\u00e9".encode()]


@pytest.mark.parametrize(
    ("raw", "shape", "message"),
    [
        (b"\x05\x00\x00\x00ab", (1,), "runs past the end"),
        (b"\x01\x00", (1,), "inside an element's length prefix"),
        (b"\x01\x00\x00\x00a", (2,), "needs 2 BYTES elements, the data holds 1"),
        (b"\x01\x00\x00\x00a\x01\x00\x00\x00b", (1,), "holds more"),
    ],
)
def test_malformed_bytes_data_is_refused(
    raw: bytes, shape: tuple[int, ...], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        from_raw(raw, "BYTES", shape, "s")


@pytest.mark.parametrize(
    ("raw", "datatype", "shape"),
    [(b"\x00" * 7, "FP32", (2,)), (b"\x00" * 9, "INT64", (1,)), (b"", "BOOL", (1,))],
)
def test_a_byte_count_that_does_not_fit_the_shape_is_refused(
    raw: bytes, datatype: str, shape: tuple[int, ...]
) -> None:
    with pytest.raises(InvalidInput, match="needs"):
        from_raw(raw, datatype, shape, "x")


def test_bool_bytes_other_than_zero_or_one_are_refused() -> None:
    with pytest.raises(InvalidInput, match="0 or 1"):
        from_raw(b"\x00\x02", "BOOL", (2,), "b")


def test_unknown_datatypes_are_refused() -> None:
    with pytest.raises(InvalidInput, match="unsupported datatype 'BF16'"):
        from_raw(b"\x00\x00", "BF16", (1,), "x")


def test_values_without_a_v2_datatype_are_refused() -> None:
    array: np.ndarray[Any, Any] = np.array([1j])
    with pytest.raises(InvalidInput, match="no datatype"):
        to_raw(array)
