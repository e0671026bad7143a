"""TensorProto <-> numpy, without TensorFlow.

Writing has two encodings. The default is TF Serving's answer encoding
(``Tensor::AsProtoField``, what Predict and the other APIs send back): every
element in the dtype's typed repeated field (``float_val``, ``double_val``,
``int_val`` for the narrow integers and quantized types, ``int64_val``,
``uint32_val``, ``uint64_val``, ``bool_val``, ``string_val``, ``half_val`` with
the 16-bit patterns of float16 and bfloat16, ``scomplex_val``/``dcomplex_val``
as interleaved real and imaginary parts, ``float8_val`` as one byte each), so a
client without TensorFlow can read ``outputs[name].float_val``. ``packed=True``
writes numeric tensors as ``tensor_content`` instead (raw little-endian bytes,
the layout ``tf.make_tensor_proto`` uses for numpy input, and TF Serving's
``--enable_serialization_as_tensor_content``); requests are cheaper that way.

Reading accepts both, including TensorFlow's fill rule for the typed fields:
when a field holds fewer values than the shape, the last value fills the rest
(so one value describes a constant tensor of any shape).

DT_STRING tensors become object arrays of ``bytes``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from servekit_protocol.dtypes import (
    COMPLEX_PART,
    STRING_KIND,
    DataTypeLike,
    Kind,
    data_type,
    data_type_name,
    dtype_name,
    element_field,
    kind_of,
    numpy_dtype,
    wire_dtype,
)
from servekit_protocol.errors import InvalidArgument
from servekit_protocol.messages import TensorProto, TensorShapeProto

# A one-value field may describe a tensor of any shape; expanding it is capped
# so a few request bytes cannot make the server allocate gigabytes.
MAX_FILL_ELEMENTS = 1 << 24


def to_shape(shape: TensorShapeProto) -> list[int] | None:
    """Dimension sizes of a TensorShapeProto (-1 unknown), None for unknown rank."""
    if shape.unknown_rank:
        return None
    return [dim.size for dim in shape.dim]


def from_shape(shape: Sequence[int | None] | None) -> TensorShapeProto:
    """A TensorShapeProto; None is an unknown rank, None or -1 an unknown size."""
    proto = TensorShapeProto()
    if shape is None:
        proto.unknown_rank = True
        return proto
    for size in shape:
        proto.dim.add(size=-1 if size is None else int(size))
    return proto


# Reading or writing dims makes a Python object per dim, which costs more than
# the rest of a small tensor. Requests repeat a handful of shapes, so both
# directions go through the serialized TensorShapeProto, a cheap key and a
# cheap value (bounded: shapes come from clients).
_SHAPE_CACHE_LIMIT = 1024
_SIZES_BY_BYTES: dict[bytes, tuple[tuple[int, ...], int]] = {}
_BYTES_BY_SIZES: dict[tuple[int, ...], bytes] = {}


def declared_shape(tensor: TensorProto) -> tuple[tuple[int, ...], int]:
    """A TensorProto's dimension sizes and element count, from its shape alone.

    Raises:
        InvalidArgument: an unknown rank or a negative dimension.
    """
    shape = tensor.tensor_shape
    key = shape.SerializeToString()
    known = _SIZES_BY_BYTES.get(key)
    if known is None:
        sizes = _read_shape(shape)
        known = (sizes, math.prod(sizes))
        if len(_SIZES_BY_BYTES) >= _SHAPE_CACHE_LIMIT:
            _SIZES_BY_BYTES.clear()
        _SIZES_BY_BYTES[key] = known
    return known


def _write_shape(sizes: tuple[int, ...], into: TensorShapeProto) -> None:
    data = _BYTES_BY_SIZES.get(sizes)
    if data is None:
        proto = TensorShapeProto()
        for size in sizes:
            proto.dim.add(size=size)
        data = proto.SerializeToString()
        if len(_BYTES_BY_SIZES) >= _SHAPE_CACHE_LIMIT:
            _BYTES_BY_SIZES.clear()
        _BYTES_BY_SIZES[sizes] = data
    into.MergeFromString(data)


def _read_shape(shape: TensorShapeProto) -> tuple[int, ...]:
    if shape.unknown_rank:
        raise InvalidArgument("Tensor shape has unknown rank")
    sizes = tuple(dim.size for dim in shape.dim)
    if any(size < 0 for size in sizes):
        raise InvalidArgument(f"Tensor shape has a negative dimension: {list(sizes)}")
    return sizes


def _typed_values(tensor: TensorProto, kind: Kind) -> np.ndarray[Any, Any]:
    field = kind.field
    if field == "half_val":
        bits = np.asarray(tensor.half_val, dtype=np.int32).astype(np.uint16)
        return bits.view(kind.numpy)
    if field == "float8_val":
        return np.frombuffer(tensor.float8_val, dtype=kind.numpy).copy()
    if field == "string_val":
        # numpy keeps bytes whole in an object array, never splitting them.
        return np.array(list(tensor.string_val), dtype=object)
    part = COMPLEX_PART.get(kind.data_type)
    if part is not None:
        interleaved = np.asarray(getattr(tensor, field), dtype=part)
        if interleaved.size % 2:
            raise InvalidArgument(
                f"{field} has {interleaved.size} values; complex needs pairs"
            )
        return interleaved.view(kind.numpy)
    if field == "int_val":
        # int_val is int32 for every narrow type; a C++-style cast keeps the
        # low bits as TensorFlow does instead of failing on overflow.
        return np.asarray(tensor.int_val, dtype=np.int32).astype(kind.numpy)
    return np.asarray(getattr(tensor, field), dtype=kind.numpy)


def to_ndarray(
    tensor: TensorProto, declared: tuple[tuple[int, ...], int] | None = None
) -> np.ndarray[Any, Any]:
    """Decode a TensorProto into a new (writable) numpy array.

    Args:
        tensor: The tensor.
        declared: Its :func:`declared_shape`, when the caller has read it
            already (the request's size check does).

    Raises:
        InvalidArgument: unsupported dtype, bad shape, or values that do not
            fit the shape.
    """
    kind = kind_of(tensor.dtype)
    shape, size = declared_shape(tensor) if declared is None else declared
    content = tensor.tensor_content if kind is not STRING_KIND else b""
    if content:
        expected = size * kind.numpy.itemsize
        if len(content) != expected:
            raise InvalidArgument(
                f"tensor_content has {len(content)} bytes; a {kind.enum_name} "
                f"tensor of shape {list(shape)} needs {expected}"
            )
        # Positional: numpy parses keyword arguments of frombuffer slowly.
        flat = np.frombuffer(content, kind.wire).astype(kind.numpy)
        return flat if flat.shape == shape else flat.reshape(shape)

    values = _typed_values(tensor, kind)
    count = values.shape[0]
    if count == size:
        return values if values.shape == shape else values.reshape(shape)
    if count > size:
        raise InvalidArgument(
            f"{kind.field} has {count} values but shape {list(shape)} holds {size}"
        )
    if size > MAX_FILL_ELEMENTS:
        raise InvalidArgument(
            f"Refusing to fill a tensor of {size} elements from {count} values"
        )
    if count == 0:
        if kind is STRING_KIND:
            filled = np.empty(size, dtype=object)
            filled[:] = b""
            return filled.reshape(shape)
        return np.zeros(shape, dtype=kind.numpy)
    filled = np.empty(size, dtype=kind.numpy)
    filled[:count] = values
    filled[count:] = values[-1]
    return filled.reshape(shape)


def _to_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise InvalidArgument(
        f"Cannot encode a {type(value).__name__} value as DT_STRING: {value!r:.40}"
    )


def _string_values(array: np.ndarray[Any, Any]) -> list[bytes]:
    if array.dtype.kind == "S":
        return list(array.ravel().tolist())
    if array.dtype.kind == "U":
        return [text.encode("utf-8") for text in array.ravel().tolist()]
    if array.dtype.kind == "O":
        return [_to_bytes(value) for value in array.ravel().tolist()]
    raise InvalidArgument(f"Cannot encode a {array.dtype} array as DT_STRING")


# Fields whose packed wire form is the values' little-endian bytes (fixed-width
# floats): the field can be written by merging a hand-made packed record, one
# copy of the bytes, instead of one Python object per element.
_FIXED_WIDTH_FIELDS: dict[str, int] = {
    "float_val": TensorProto.FLOAT_VAL_FIELD_NUMBER,
    "double_val": TensorProto.DOUBLE_VAL_FIELD_NUMBER,
    "scomplex_val": TensorProto.SCOMPLEX_VAL_FIELD_NUMBER,
    "dcomplex_val": TensorProto.DCOMPLEX_VAL_FIELD_NUMBER,
}
_LENGTH_DELIMITED = 2


def varint(value: int) -> bytes:
    """``value`` (not negative) as a protobuf base-128 varint."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _packed_record(field_number: int, data: bytes) -> bytes:
    return varint(field_number << 3 | _LENGTH_DELIMITED) + varint(len(data)) + data


def _write_typed(values: np.ndarray[Any, Any], kind: Kind, tensor: TensorProto) -> None:
    """Every element into the dtype's typed field, as ``Tensor::AsProtoField``."""
    field = kind.field
    if values.size == 0:
        return
    number = _FIXED_WIDTH_FIELDS.get(field)
    if number is not None:
        part = COMPLEX_PART.get(kind.data_type)
        wire = kind.wire if part is None else wire_dtype(part)
        flat = values if part is None else values.view(part)
        data = (flat if flat.dtype == wire else flat.astype(wire)).tobytes()
        tensor.MergeFromString(_packed_record(number, data))
    elif field == "half_val":
        # The 16-bit pattern of each value, as a non-negative int32.
        bits = values.view(np.uint16).astype(np.int32)
        tensor.half_val.extend(bits.ravel().tolist())
    elif field == "float8_val":
        tensor.float8_val = values.tobytes()
    elif field == "int_val":
        tensor.int_val.extend(values.astype(np.int32).ravel().tolist())
    else:
        # int64_val, uint32_val, uint64_val, bool_val: tolist() gives Python
        # ints and bools of the right range.
        getattr(tensor, field).extend(values.ravel().tolist())


def from_ndarray(
    array: npt.ArrayLike,
    dtype: DataTypeLike | None = None,
    *,
    into: TensorProto | None = None,
    packed: bool = False,
) -> TensorProto:
    """Encode an array (or nested list/scalar) as a TensorProto.

    Args:
        array: the values; str/bytes elements make a DT_STRING tensor.
        dtype: the TensorProto dtype to encode as (the array is cast to it);
            default: inferred from the array's numpy dtype.
        into: a message to fill (it is cleared first), e.g.
            ``response.outputs["y"]``, which saves a copy of the bytes.
        packed: write numeric values as ``tensor_content`` (cheaper; what
            ``tf.make_tensor_proto`` sends) instead of the typed field TF
            Serving's answers use. Strings and sub-byte integers always use
            their typed field, as in TensorFlow.

    Raises:
        InvalidArgument: the values cannot be represented with that dtype.
    """
    kind = None if dtype is None else kind_of(dtype)
    if kind is STRING_KIND or kind is None:
        values = np.asarray(array)
        if kind is None:
            kind = kind_of(values.dtype)
    else:
        try:
            values = np.asarray(array, dtype=kind.numpy)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidArgument(
                f"Cannot convert values to {kind.enum_name}: {exc}"
            ) from exc

    if into is None:
        tensor = TensorProto()
    else:
        tensor = into
        tensor.Clear()
    tensor.dtype = kind.data_type
    if values.shape:
        # A scalar leaves tensor_shape unset, as adding no dims does.
        _write_shape(values.shape, tensor.tensor_shape)
    if kind is STRING_KIND:
        tensor.string_val.extend(_string_values(values))
    elif packed and kind.content:
        # tobytes() writes C order whatever the layout, so only the byte
        # order may need a cast.
        wire = values if values.dtype == kind.wire else values.astype(kind.wire)
        tensor.tensor_content = wire.tobytes()
    else:
        _write_typed(values, kind, tensor)
    return tensor


__all__ = [
    "varint",
    "MAX_FILL_ELEMENTS",
    "DataTypeLike",
    "data_type",
    "declared_shape",
    "data_type_name",
    "dtype_name",
    "element_field",
    "from_ndarray",
    "from_shape",
    "numpy_dtype",
    "to_ndarray",
    "to_shape",
]
