"""JSON Lines rows as typed columns, where the rows of a chunk share one shape.

Rows that are all objects with the same keys (a key for every input of the
signature) become one column per key; rows that are all lists of numbers of
one length become a matrix; rows that are all plain values become one column.
Each column is typed as Arrow infers it from the JSON values (``float64`` when
integers and numbers mix, ``int64``, ``bool``, text), which is the array the
REST codec builds from the same values; a column Arrow cannot type (mixed
kinds, nulls, nested values) holds the values as they are, and the model's
arrays are then left to the codec (:meth:`TableColumns.model_inputs`). Any
other chunk is not made columns at all.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from servekit_protocol import json_codec
from servekit_protocol.errors import InvalidArgument

from servekit.batch.columns import BARE, KEYED, LIST, Array, TableColumns, object_array
from servekit.batch.schema import InputSchema


def json_columns(values: list[Any], schema: InputSchema) -> TableColumns | None:
    """The rows' columns, or ``None`` when the rows differ in shape."""
    if not values:
        return None
    first = values[0]
    if isinstance(first, dict):
        keys = first.keys()
        if not all(type(row) is dict and row.keys() == keys for row in values):
            return None
        names = list(keys)
        if not names or not schema.keyed_by(names):
            return None
        arrays = {name: _column([row[name] for row in values]) for name in names}
        return TableColumns(arrays, KEYED, list(schema.inputs))
    if isinstance(first, list):
        matrix = _matrix(values)
        if matrix is None:
            return None
        arrays = {str(index): matrix[:, index] for index in range(matrix.shape[1])}
        return TableColumns(arrays, LIST, list(arrays), named=False)
    if any(isinstance(value, dict | list) for value in values):
        return None
    return TableColumns({"": _column(values)}, BARE, [""], named=False)


def _column(values: list[Any]) -> Array:
    try:
        array = pa.array(values)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        return object_array(values)
    kind = array.type
    if array.null_count or not (
        pa.types.is_floating(kind)
        or pa.types.is_integer(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_string(kind)
    ):
        return object_array(values)
    if pa.types.is_string(kind):
        return object_array(values)
    numbers: Array = array.to_numpy(zero_copy_only=False)
    return numbers


def _matrix(values: list[Any]) -> Array | None:
    """Rows of numbers of one length as a 2-D array (``None`` otherwise)."""
    if not all(type(row) is list for row in values):
        return None
    try:
        array = pa.array(values)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        return None
    if not pa.types.is_list(array.type) or array.null_count:
        return None
    flat = array.flatten()
    kind = flat.type
    if flat.null_count or not (pa.types.is_floating(kind) or pa.types.is_integer(kind)):
        return None
    lengths = pc.list_value_length(array)
    width = pc.min(lengths).as_py()
    if not width or pc.max(lengths).as_py() != width:
        return None
    matrix: Array = np.asarray(flat.to_numpy()).reshape(len(values), width)
    return matrix


def parse_instance(text: bytes) -> Any:
    """A JSON Lines row as the codec reads it.

    Raises:
        InvalidArgument: Not JSON, or not a value an instance can be.
    """
    value = json_codec.loads(text)
    if not isinstance(value, dict | list | str | int | float | bool):
        raise InvalidArgument(f"JSON Value: {text[:64]!r} is not an instance")
    return value


def request_value(value: Any) -> Any:
    """``value`` as a request carries it (NaN and infinities as TF Serving's tokens)."""
    if isinstance(value, float) and not math.isfinite(value):
        return orjson.Fragment(
            b"NaN" if math.isnan(value) else b"Infinity" if value > 0 else b"-Infinity"
        )
    if isinstance(value, list):
        return [request_value(item) for item in value]
    if isinstance(value, dict):
        return {key: request_value(item) for key, item in value.items()}
    return value
