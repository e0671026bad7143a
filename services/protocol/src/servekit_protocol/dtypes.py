"""TensorFlow's DataTypes and their numpy dtypes and TensorProto fields.

One table (`all_kinds`) says, for every DataType servekit reads or writes, its
numpy dtype, the typed repeated field TensorFlow writes its values in, and
whether `tensor_content` may carry it; the lookups below resolve the spellings
requests, signatures and manifests use.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeAlias

import ml_dtypes
import numpy as np

from servekit_protocol.errors import InvalidArgument
from servekit_protocol.messages import DataType

DataTypeLike: TypeAlias = "int | str | np.dtype[Any] | type[Any]"


def wire_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    if dtype.kind in "biufc" and dtype.itemsize > 1:
        return dtype.newbyteorder("<")
    return dtype


@dataclass(frozen=True, slots=True)
class Kind:
    data_type: DataType.ValueType
    name: str
    numpy: np.dtype[Any]
    field: str
    # May be written as tensor_content (False: TensorFlow always uses the
    # typed field for this dtype).
    content: bool = True
    # Derived once here rather than on every tensor of every request.
    wire: np.dtype[Any] = dataclasses.field(init=False)
    enum_name: str = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "wire", wire_dtype(self.numpy))
        object.__setattr__(self, "enum_name", DataType.Name(self.data_type))


def all_kinds() -> list[Kind]:
    object_dtype = np.dtype(object)
    return [
        Kind(DataType.DT_FLOAT, "float32", np.dtype(np.float32), "float_val"),
        Kind(DataType.DT_DOUBLE, "float64", np.dtype(np.float64), "double_val"),
        Kind(DataType.DT_HALF, "float16", np.dtype(np.float16), "half_val"),
        Kind(
            DataType.DT_BFLOAT16, "bfloat16", np.dtype(ml_dtypes.bfloat16), "half_val"
        ),
        Kind(DataType.DT_INT8, "int8", np.dtype(np.int8), "int_val"),
        Kind(DataType.DT_INT16, "int16", np.dtype(np.int16), "int_val"),
        Kind(DataType.DT_INT32, "int32", np.dtype(np.int32), "int_val"),
        Kind(DataType.DT_INT64, "int64", np.dtype(np.int64), "int64_val"),
        Kind(DataType.DT_UINT8, "uint8", np.dtype(np.uint8), "int_val"),
        Kind(DataType.DT_UINT16, "uint16", np.dtype(np.uint16), "int_val"),
        Kind(DataType.DT_UINT32, "uint32", np.dtype(np.uint32), "uint32_val"),
        Kind(DataType.DT_UINT64, "uint64", np.dtype(np.uint64), "uint64_val"),
        Kind(DataType.DT_BOOL, "bool", np.dtype(np.bool_), "bool_val"),
        Kind(DataType.DT_STRING, "string", object_dtype, "string_val", False),
        Kind(
            DataType.DT_COMPLEX64, "complex64", np.dtype(np.complex64), "scomplex_val"
        ),
        Kind(
            DataType.DT_COMPLEX128,
            "complex128",
            np.dtype(np.complex128),
            "dcomplex_val",
        ),
        # Quantized types travel as their storage integers.
        Kind(DataType.DT_QINT8, "qint8", np.dtype(np.int8), "int_val"),
        Kind(DataType.DT_QUINT8, "quint8", np.dtype(np.uint8), "int_val"),
        Kind(DataType.DT_QINT16, "qint16", np.dtype(np.int16), "int_val"),
        Kind(DataType.DT_QUINT16, "quint16", np.dtype(np.uint16), "int_val"),
        Kind(DataType.DT_QINT32, "qint32", np.dtype(np.int32), "int_val"),
        Kind(
            DataType.DT_FLOAT8_E5M2,
            "float8_e5m2",
            np.dtype(ml_dtypes.float8_e5m2),
            "float8_val",
        ),
        Kind(
            DataType.DT_FLOAT8_E4M3FN,
            "float8_e4m3fn",
            np.dtype(ml_dtypes.float8_e4m3fn),
            "float8_val",
        ),
        Kind(
            DataType.DT_FLOAT8_E4M3FNUZ,
            "float8_e4m3fnuz",
            np.dtype(ml_dtypes.float8_e4m3fnuz),
            "float8_val",
        ),
        Kind(
            DataType.DT_FLOAT8_E4M3B11FNUZ,
            "float8_e4m3b11fnuz",
            np.dtype(ml_dtypes.float8_e4m3b11fnuz),
            "float8_val",
        ),
        Kind(
            DataType.DT_FLOAT8_E5M2FNUZ,
            "float8_e5m2fnuz",
            np.dtype(ml_dtypes.float8_e5m2fnuz),
            "float8_val",
        ),
        # TensorFlow writes sub-byte integers one per int_val entry, never
        # packed into tensor_content.
        Kind(DataType.DT_INT4, "int4", np.dtype(ml_dtypes.int4), "int_val", False),
        Kind(DataType.DT_UINT4, "uint4", np.dtype(ml_dtypes.uint4), "int_val", False),
        Kind(DataType.DT_INT2, "int2", np.dtype(ml_dtypes.int2), "int_val", False),
        Kind(DataType.DT_UINT2, "uint2", np.dtype(ml_dtypes.uint2), "int_val", False),
    ]


_KINDS = all_kinds()
_BY_DATA_TYPE: dict[int, Kind] = {kind.data_type: kind for kind in _KINDS}
_BY_NAME: dict[str, Kind] = {kind.name: kind for kind in _KINDS}
_BY_NAME.update({kind.enum_name.lower(): kind for kind in _KINDS})
_BY_NAME.update(
    {
        "float": _BY_DATA_TYPE[DataType.DT_FLOAT],
        "double": _BY_DATA_TYPE[DataType.DT_DOUBLE],
        "half": _BY_DATA_TYPE[DataType.DT_HALF],
        "str": _BY_DATA_TYPE[DataType.DT_STRING],
        "bytes": _BY_DATA_TYPE[DataType.DT_STRING],
        "object": _BY_DATA_TYPE[DataType.DT_STRING],
    }
)
# Quantized kinds share numpy dtypes with plain integers; plain ones win.
_BY_NUMPY: dict[np.dtype[Any], Kind] = {}
for _entry in _KINDS:
    _BY_NUMPY.setdefault(_entry.numpy, _entry)
STRING_KIND = _BY_DATA_TYPE[DataType.DT_STRING]
COMPLEX_PART: dict[int, np.dtype[Any]] = {
    DataType.DT_COMPLEX64: np.dtype(np.float32),
    DataType.DT_COMPLEX128: np.dtype(np.float64),
}


# Every spelling _BY_NAME accepts after lower(), plus the enum names signatures
# carry ("DT_FLOAT"), so the usual forms need no case folding.
_BY_SPELLING: dict[str, Kind] = {
    **_BY_NAME,
    **{kind.enum_name: kind for kind in _KINDS},
}


# Typed fields that do not hold one entry per element: complex values take two
# entries, float8 values are packed into one bytes value.
_NOT_PER_ELEMENT = frozenset({"scomplex_val", "dcomplex_val", "float8_val"})


def element_field(dtype: DataTypeLike) -> str | None:
    """The TensorProto field holding one entry per element of ``dtype``'s tensors
    (``"float_val"``, ``"string_val"``...), or None when there is none.

    Raises:
        InvalidArgument: unsupported dtype.
    """
    field = kind_of(dtype).field
    return None if field in _NOT_PER_ELEMENT else field


def kind_of(dtype: DataTypeLike) -> Kind:
    # Requests resolve dtypes many times each, so the exact forms they carry
    # (enum values, signature spellings, numpy dtypes) cost one lookup; the
    # general path below answers them the same way, and handles the rest.
    known: Kind | None = None
    if type(dtype) is int:
        known = _BY_DATA_TYPE.get(dtype)
    elif type(dtype) is str:
        known = _BY_SPELLING.get(dtype)
    elif isinstance(dtype, np.dtype):
        known = _BY_NUMPY.get(dtype)
    if known is not None:
        return known
    if isinstance(dtype, bool):
        raise InvalidArgument(f"Unsupported dtype: {dtype!r}")
    if isinstance(dtype, int):
        kind = _BY_DATA_TYPE.get(dtype)
        if kind is None:
            try:
                name = DataType.Name(DataType.ValueType(dtype))
            except ValueError:
                name = str(dtype)
            raise InvalidArgument(f"Unsupported dtype: {name}")
        return kind
    if isinstance(dtype, str):
        kind = _BY_NAME.get(dtype.lower())
        if kind is not None:
            return kind
    if dtype in (str, bytes):
        return STRING_KIND
    try:
        np_dtype = np.dtype(dtype)
    except TypeError as exc:
        raise InvalidArgument(f"Unsupported dtype: {dtype!r}") from exc
    if np_dtype.kind in "OSU":
        return STRING_KIND
    kind = _BY_NUMPY.get(np_dtype if np_dtype.isnative else np_dtype.newbyteorder("="))
    if kind is None:
        raise InvalidArgument(f"Unsupported dtype: {np_dtype}")
    return kind


def data_type(dtype: DataTypeLike) -> DataType.ValueType:
    """The DataType enum value for a DataType, dtype name or numpy dtype.

    Names may be servekit's ("float32", "string"), TensorFlow's ("DT_FLOAT",
    "float", "half") or numpy's.

    Raises:
        InvalidArgument: the dtype has no TensorProto encoding here.
    """
    return kind_of(dtype).data_type


def dtype_name(dtype: DataTypeLike) -> str:
    """servekit's dtype string ("float32", "int64", "string"...) for any dtype form.

    Raises:
        InvalidArgument: the dtype is not supported.
    """
    return kind_of(dtype).name


def data_type_name(dtype: DataTypeLike) -> str:
    """TensorFlow's enum name ("DT_FLOAT"), as TF Serving's JSON metadata shows it.

    Raises:
        InvalidArgument: the dtype is not supported.
    """
    return kind_of(dtype).enum_name


def numpy_dtype(dtype: DataTypeLike) -> np.dtype[Any]:
    """The numpy dtype arrays of this dtype have (object for DT_STRING).

    Raises:
        InvalidArgument: the dtype is not supported.
    """
    return kind_of(dtype).numpy
