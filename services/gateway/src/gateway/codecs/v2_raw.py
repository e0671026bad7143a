"""Open Inference Protocol tensors as raw bytes, both directions.

The binary tensor data extension (HTTP) and `raw_input_contents` /
`raw_output_contents` (gRPC) carry a tensor as its elements in row-major order:
numbers little-endian at their natural width, BOOL one byte each, and BYTES as
each element's length in a 4-byte little-endian unsigned integer followed by the
element's bytes. Pure functions; no transport here.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from gateway.codecs.v2_datatypes import V2_TO_NUMPY, v2_datatype
from gateway.errors import InvalidInput

_LENGTH = struct.Struct("<I")


def datatype_dtype(datatype: str, name: str) -> np.dtype[Any]:
    """The numpy dtype of a v2 datatype name.

    Raises:
        InvalidInput: not a datatype servekit serves.
    """
    dtype = V2_TO_NUMPY.get(datatype)
    if dtype is None:
        raise InvalidInput(
            f"tensor {name!r}: unsupported datatype {datatype!r} "
            f"(one of {', '.join(V2_TO_NUMPY)})"
        )
    return dtype


def _element_bytes(item: Any) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode("utf-8")
    if isinstance(item, np.bytes_ | np.str_):
        return _element_bytes(item.item())
    # Numbers in a BYTES tensor travel as their text, as Triton's clients do.
    return str(item).encode("utf-8")


def encode_bytes_elements(array: np.ndarray[Any, Any]) -> bytes:
    """BYTES elements, each prefixed with its length (row-major order)."""
    parts: list[bytes] = []
    for item in array.reshape(-1).tolist():
        element = _element_bytes(item)
        parts.append(_LENGTH.pack(len(element)))
        parts.append(element)
    return b"".join(parts)


def decode_bytes_elements(raw: bytes, count: int, name: str) -> np.ndarray[Any, Any]:
    """Exactly `count` length-prefixed elements, as a flat object array of bytes.

    Raises:
        InvalidInput: a prefix runs past the end, or the count does not match.
    """
    view = memoryview(raw)
    elements: list[bytes] = []
    offset = 0
    end = len(view)
    while offset < end:
        if end - offset < _LENGTH.size:
            raise InvalidInput(
                f"tensor {name!r}: BYTES data ends inside an element's length prefix"
            )
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += _LENGTH.size
        if length > end - offset:
            raise InvalidInput(
                f"tensor {name!r}: BYTES element of {length} bytes runs past the "
                f"end of the data"
            )
        elements.append(bytes(view[offset : offset + length]))
        offset += length
        if len(elements) > count:
            break
    if len(elements) != count:
        raise InvalidInput(
            f"tensor {name!r}: the shape needs {count} BYTES elements, the data "
            f"holds {'more' if len(elements) > count else len(elements)}"
        )
    array = np.empty(count, dtype=object)
    array[:] = elements
    return array


def check_raw(
    raw: bytes | memoryview, datatype: str, shape: tuple[int, ...], name: str
) -> np.dtype[Any]:
    """The numpy dtype of a tensor's raw bytes, checked to fit: a fixed-size
    datatype's byte count against the shape, BOOL bytes 0 or 1 (BYTES
    elements are checked as they are decoded).

    Raises:
        InvalidInput: unknown datatype, or bytes that do not fit the shape.
    """
    dtype = datatype_dtype(datatype, name)
    if dtype.kind == "O":
        return dtype
    count = math.prod(shape)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidInput(
            f"tensor {name!r}: shape {list(shape)} of {datatype} needs {expected} "
            f"bytes, got {len(raw)}"
        )
    if dtype.kind == "b" and expected and int(np.frombuffer(raw, np.uint8).max()) > 1:
        raise InvalidInput(f"tensor {name!r}: BOOL bytes must be 0 or 1")
    return dtype


def from_raw(
    raw: bytes, datatype: str, shape: tuple[int, ...], name: str
) -> np.ndarray[Any, Any]:
    """A tensor from its raw bytes.

    Raises:
        InvalidInput: unknown datatype, or a byte count that does not fit the shape.
    """
    dtype = check_raw(raw, datatype, shape, name)
    if dtype.kind == "O":
        return decode_bytes_elements(raw, math.prod(shape), name).reshape(shape)
    array = np.frombuffer(raw, dtype=dtype.newbyteorder("<"))
    # frombuffer views the (immutable) request bytes; callers may write.
    return array.astype(dtype).reshape(shape)


def to_raw(array: np.ndarray[Any, Any]) -> tuple[str, bytes]:
    """A tensor's v2 datatype and raw bytes.

    Raises:
        InvalidInput: no v2 datatype exists for the array's dtype.
    """
    datatype = v2_datatype(array.dtype)
    if datatype == "BYTES":
        return datatype, encode_bytes_elements(array)
    wire = array.dtype.newbyteorder("<")
    return datatype, np.ascontiguousarray(array, dtype=wire).tobytes()


__all__ = [
    "check_raw",
    "datatype_dtype",
    "decode_bytes_elements",
    "encode_bytes_elements",
    "from_raw",
    "to_raw",
]
