"""JSON values <-> numpy arrays, by a signature input's dtype and shape.

Ragged lists, leaves of the wrong JSON type and integers out of the dtype's range
are refused with TF Serving's messages; outputs are written back with strings as
UTF-8 text or ``{"b64": ...}`` and non-finite floats as bare tokens.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from servekit_protocol import tensors
from servekit_protocol.errors import InvalidArgument
from servekit_protocol.json_codec.document import (
    debug_text,
    decode_b64,
    is_b64,
    json_type,
)
from servekit_protocol.messages import DT_STRING, TensorInfo

BYTES_SUFFIX = "_bytes"
MAX_DIMS = 64
"""Dimensions of a tensor decoded from JSON (numpy's own limit)."""
_NAN = orjson.Fragment(b"NaN")
_INFINITY = orjson.Fragment(b"Infinity")
_MINUS_INFINITY = orjson.Fragment(b"-Infinity")


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """What a signature expects of one input.

    Attributes:
        dtype: a dtype name ("float32", "string", "DT_FLOAT"...).
        shape: dimension sizes with -1 for any size (first = batch), or None
            to accept any shape.
    """

    dtype: str
    shape: tuple[int, ...] | None = None


def specs_from_tensor_infos(infos: Mapping[str, TensorInfo]) -> dict[str, TensorSpec]:
    """TensorSpecs from a SignatureDef's ``inputs`` (unknown shapes accept any)."""
    specs = {}
    for name, info in infos.items():
        shape = (
            tensors.to_shape(info.tensor_shape)
            if info.HasField("tensor_shape")
            else None
        )
        specs[name] = TensorSpec(
            tensors.dtype_name(info.dtype) if info.dtype else "DT_INVALID",
            None if shape is None else tuple(shape),
        )
    return specs


def dense_shape(value: object) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _check_leaf_level(value: object, shape: list[int], level: int) -> None:
    """A scalar must sit at the innermost level of the tensor's nesting."""
    if level != len(shape):
        raise InvalidArgument(
            f"JSON Value: {debug_text(value)} found at incorrect level: {level + 1} "
            f"in the JSON DOM. Expected at level: {len(shape)}"
        )


def _check_list_level(value: list[Any], shape: list[int], level: int) -> None:
    """A list must sit above the innermost level and have that dimension's size."""
    if level >= len(shape):
        raise InvalidArgument(
            f"Encountered list at unexpected level: {level} expected < {len(shape)}"
        )
    if len(value) != shape[level]:
        raise InvalidArgument(
            f"Encountered list at unexpected size: {len(value)} at level: {level} "
            f"expected size: {shape[level]}"
        )


def _flatten_strings(
    value: object, shape: list[int], level: int, out: list[bytes]
) -> None:
    if not isinstance(value, list):
        _check_leaf_level(value, shape, level)
        if isinstance(value, str):
            out.append(value.encode("utf-8"))
        elif is_b64(value):
            out.append(decode_b64(value))  # type: ignore[arg-type]
        elif isinstance(value, dict):
            raise InvalidArgument(
                f"JSON Value: {debug_text(value)} not formatted correctly for base64 data"
            )
        else:
            raise type_error(value, "string")
        return
    _check_list_level(value, shape, level)
    for item in value:
        _flatten_strings(item, shape, level + 1, out)


def type_error(value: object, dtype: str) -> InvalidArgument:
    return InvalidArgument(
        f"JSON Value: {debug_text(value)} Type: {json_type(value)} "
        f"is not of expected type: {dtype}"
    )


def _first_leaf(value: object) -> object:
    while isinstance(value, list) and value:
        value = value[0]
    return value


def _find_bad_leaf(value: object, accept: Callable[[object], bool]) -> object | None:
    if isinstance(value, list):
        for item in value:
            bad = _find_bad_leaf(item, accept)
            if bad is not None:
                return bad
        return None
    return None if accept(value) else value


def _is_json_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_json_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _numeric_array(value: object, reader: _Reader) -> np.ndarray[Any, Any]:
    target = reader.target
    try:
        raw = np.asarray(value)
    except ValueError:
        raw = None
    if raw is None or raw.dtype == object:
        # Ragged lists or leaves numpy cannot type: name the problem.
        _check_structure(value, dense_shape(value), 0)
        raise type_error(_first_bad(value, target), reader.name)
    found = raw.dtype
    kind = found.kind
    if reader.boolean:
        if kind != "b":
            raise type_error(_first_bad(value, target), reader.name)
        return raw
    if kind in "USb" or (reader.bounds is not None and kind == "f"):
        raise type_error(_first_bad(value, target), reader.name)
    if found == target:
        # Values numpy already typed as the target are in its range, and an
        # array numpy built from a list is not shared, so needs no copy.
        return raw if type(value) is list else raw.astype(target)
    if reader.bounds is not None and raw.size:
        minimum, maximum = reader.bounds
        low, high = raw.min(), raw.max()
        if low < minimum or high > maximum:
            raise type_error((low if low < minimum else high).item(), reader.name)
    return raw.astype(target)


def _leaf_accepts(target: np.dtype[Any]) -> Callable[[object], bool]:
    if target.kind == "b":
        return lambda leaf: isinstance(leaf, bool)
    if target.kind in "iu":
        return _is_json_int
    return _is_json_number


def _first_bad(value: object, target: np.dtype[Any]) -> object:
    bad = _find_bad_leaf(value, _leaf_accepts(target))
    return bad if bad is not None else _first_leaf(value)


def _check_structure(value: object, shape: list[int], level: int) -> None:
    # The structural checks of _flatten_strings, for numeric error messages.
    if not isinstance(value, list):
        _check_leaf_level(value, shape, level)
        return
    _check_list_level(value, shape, level)
    for item in value:
        _check_structure(item, shape, level + 1)


@dataclass(frozen=True, slots=True)
class _Reader:
    """What converting JSON values to one dtype needs, resolved once per dtype."""

    name: str
    target: np.dtype[Any]
    string: bool
    boolean: bool
    # Inclusive range of an integer target; None for other kinds.
    bounds: tuple[int, int] | None

    @classmethod
    def of(cls, dtype: str) -> _Reader:
        target = tensors.numpy_dtype(dtype)
        bounds = None
        if target.kind in "iu":
            info = np.iinfo(target)
            bounds = (int(info.min), int(info.max))
        return cls(
            name=tensors.dtype_name(dtype),
            target=target,
            string=tensors.data_type(dtype) == DT_STRING,
            boolean=target.kind == "b",
            bounds=bounds,
        )


# Every value of every request is converted through its input's dtype; the few
# dtypes signatures name are resolved once. Bounded, as to_array is public.
_READER_CACHE_LIMIT = 256
_READERS: dict[str, _Reader] = {}


def _reader(dtype: str) -> _Reader:
    if type(dtype) is not str:
        return _Reader.of(dtype)
    reader = _READERS.get(dtype)
    if reader is None:
        reader = _Reader.of(dtype)
        if len(_READERS) >= _READER_CACHE_LIMIT:
            _READERS.clear()
        _READERS[dtype] = reader
    return reader


def _string_array(value: object) -> np.ndarray[Any, Any]:
    if type(value) is list and all(type(item) is str for item in value):
        # A column of text, as rows give: flat, so none of the structure
        # checks can fail.
        return np.array([item.encode("utf-8") for item in value], dtype=object)
    shape = dense_shape(value)
    flat: list[bytes] = []
    _flatten_strings(value, shape, 0, flat)
    array = np.empty(len(flat), dtype=object)
    array[:] = flat
    return array.reshape(shape)


def _check_depth(value: list[Any]) -> None:
    # numpy holds at most MAX_DIMS dimensions, and the structure checks recurse
    # once per level: deeper nesting is refused before either sees it.
    depth = len(dense_shape(value))
    if depth > MAX_DIMS:
        raise InvalidArgument(
            f"JSON Value: nested {depth} lists deep; a tensor has at most "
            f"{MAX_DIMS} dimensions"
        )


def to_array(value: object, spec: TensorSpec) -> np.ndarray[Any, Any]:
    """Convert one JSON value (scalar or nested lists) to an array of spec.dtype.

    Raises:
        InvalidArgument: the value has the wrong type or a ragged shape.
    """
    reader = _reader(spec.dtype)
    if type(value) is list and type(value[0] if value else None) is list:
        _check_depth(value)
    if reader.string:
        return _string_array(value)
    if isinstance(value, dict):
        raise type_error(value, reader.name)
    return _numeric_array(value, reader)


def _fits(expected: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    # A plain loop: a generator costs more than the check on these few dims.
    if len(expected) != len(shape):
        return False
    for index, want in enumerate(expected):
        if want >= 0 and want != shape[index]:
            return False
    return True


def check_shape(name: str, array: np.ndarray[Any, Any], spec: TensorSpec) -> None:
    expected = spec.shape
    if expected is None:
        return
    shape = array.shape
    if _fits(expected, shape):
        return
    shown = ",".join(str(size) for size in expected)
    got_text = ",".join(str(size) for size in shape)
    raise InvalidArgument(
        f"Input: {name} has shape [{got_text}] but the signature expects [{shown}] "
        "(-1: any size)"
    )


def _string_leaf(value: object, as_bytes: bool) -> object:
    if isinstance(value, str):
        if as_bytes:
            return {"b64": base64.b64encode(value.encode("utf-8")).decode("ascii")}
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        if not as_bytes:
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                pass
        return {"b64": base64.b64encode(raw).decode("ascii")}
    raise InvalidArgument(
        f"Failed to write JSON value for tensor type: string ({type(value).__name__})"
    )


def _float_leaf(value: np.floating[Any]) -> object:
    if math.isnan(value):
        return _NAN
    if math.isinf(value):
        return _INFINITY if value > 0 else _MINUS_INFINITY
    return value


def to_jsonable(array: np.ndarray[Any, Any], name: str = "") -> Any:
    """An orjson-serializable form of an output array (numpy kept where possible).

    Raises:
        InvalidArgument: a dtype JSON cannot carry (complex, ...).
    """
    kind = array.dtype.kind
    if kind in "OSU":
        as_bytes = name.endswith(BYTES_SUFFIX)
        flat = [_string_leaf(value, as_bytes) for value in array.ravel().tolist()]
        holder = np.empty(len(flat), dtype=object)
        holder[:] = flat
        return holder.reshape(array.shape).tolist()
    if kind == "c":
        raise InvalidArgument(
            f"Failed to write JSON value for tensor type: {tensors.data_type_name(array.dtype)}"
        )
    if kind not in "biuf":
        # bfloat16 and float8 have no JSON writer in orjson; float32 holds them.
        array = array.astype(np.float32)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    # count_nonzero: ndarray.all() costs more than the test on small outputs.
    if array.dtype.kind == "f" and np.count_nonzero(np.isfinite(array)) != array.size:
        holder = np.empty(array.size, dtype=object)
        holder[:] = [_float_leaf(value) for value in array.ravel()]
        return holder.reshape(array.shape).tolist()
    if array.ndim == 0:
        return array[()]
    return np.ascontiguousarray(array)
