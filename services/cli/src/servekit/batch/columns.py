"""A table chunk kept as typed columns: model inputs and JSON text without per-row work.

A CSV or Parquet chunk is held as one numpy array per column, typed as the row
instances would be (``float64`` with NaN for missing numbers, ``int64``, ``bool``,
or objects). From them, for any set of rows:

- :meth:`TableColumns.model_inputs` gives the arrays the REST codec would decode
  from those rows' instances (the same dtypes, values and shapes), or ``None``
  when only the codec can say what it makes of them (then the rows go through
  it, as before);
- :meth:`TableColumns.instance_texts` gives each row's instance as the JSON text
  ``orjson`` writes for the instance value (numbers formatted a column at a
  time, NaN and infinities as TF Serving's tokens).

Rows are materialised as Python values only when one is asked for (an error
row, a CSV or Parquet output row).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
from numpy.typing import NDArray

KEYED = "keyed"
"""Each row is an object keyed by column name."""
LIST = "list"
"""Each row is the list of its values (a single input the columns do not name)."""
BARE = "bare"
"""Each row is its one column's value."""

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
_NAN = orjson.Fragment(b"NaN")
_INFINITY = orjson.Fragment(b"Infinity")
_MINUS_INFINITY = orjson.Fragment(b"-Infinity")

Array = NDArray[Any]
_ROW_PADDING = 16
"""Values after each row of the columns stacked as rows (see :func:`_side_by_side`)."""


@dataclass
class TableColumns:
    """Typed columns of consecutive rows, and how a row becomes an instance.

    Attributes:
        arrays: One array per column, in the file's column order; a row with a
            read error holds a placeholder in them.
        layout: :data:`KEYED`, :data:`LIST` or :data:`BARE`.
        sent: The columns a request sends (keyed rows: the signature's inputs;
            other columns stay in the output's instance only).
        error_instances: Offset -> the instance written for a row that could not
            be read (its cells as text).
        named: Whether the columns have names of their own (a file's columns,
            an object's keys); JSON Lines rows that are lists or plain values
            do not, and are one ``instance`` column in a table of results.
        source: A Parquet chunk's columns as read (``None`` for other
            inputs): a table of results takes them as they are, and a text
            input's UTF-8 bytes come from them.
    """

    arrays: dict[str, Array]
    layout: str
    sent: list[str]
    error_instances: dict[int, Any] = field(default_factory=dict)
    named: bool = True
    source: pa.Table | None = None

    @property
    def rows(self) -> int:
        """How many rows the columns hold."""
        return len(next(iter(self.arrays.values())))

    def window(self, first: int, rows: int) -> TableColumns:
        """Rows ``first`` to ``first + rows`` as columns of their own (views, no copy)."""
        last = first + rows
        return TableColumns(
            {name: array[first:last] for name, array in self.arrays.items()},
            self.layout,
            self.sent,
            {
                offset - first: instance
                for offset, instance in self.error_instances.items()
                if first <= offset < last
            },
            self.named,
            None if self.source is None else self.source.slice(first, rows),
        )

    @staticmethod
    def joined(parts: list[TableColumns]) -> TableColumns:
        """The rows of ``parts`` (columns of one file, in order) as one set of columns."""
        if len(parts) == 1:
            return parts[0]
        first = parts[0]
        errors: dict[int, Any] = {}
        offset = 0
        for part in parts:
            errors.update(
                {
                    offset + row: instance
                    for row, instance in part.error_instances.items()
                }
            )
            offset += part.rows
        read = [part.source for part in parts if part.source is not None]
        source = pa.concat_tables(read) if len(read) == len(parts) else None
        return TableColumns(
            {
                name: np.concatenate([part.arrays[name] for part in parts])
                for name in first.arrays
            },
            first.layout,
            first.sent,
            errors,
            first.named,
            source,
        )

    def instance(self, offset: int, *, plain: bool = False) -> Any:
        """Row ``offset``'s instance (``plain``: NaN and infinities as floats)."""
        if offset in self.error_instances:
            return self.error_instances[offset]
        values = {
            name: _value(array, offset, plain) for name, array in self.arrays.items()
        }
        if self.layout == KEYED:
            return values
        if self.layout == BARE:
            return next(iter(values.values()))
        return list(values.values())

    def request(self, offset: int) -> Any:
        """What row ``offset`` sends to the model (the codec's input)."""
        if offset in self.error_instances:
            return self.error_instances[offset]
        if self.layout == KEYED and len(self.sent) != len(self.arrays):
            return {
                name: _value(self.arrays[name], offset, False) for name in self.sent
            }
        return self.instance(offset)

    def model_inputs(
        self,
        dtypes: Mapping[str, np.dtype[Any]],
        offsets: Array,
        *,
        text_as_str: bool = False,
    ) -> dict[str, Array] | None:
        """The codec's arrays for these rows, by input name; ``None``: ask the codec.

        Args:
            dtypes: Each input's numpy dtype (``object`` for strings).
            offsets: The rows, ascending.
            text_as_str: Give text inputs as ``str`` objects rather than the
                codec's UTF-8 ``bytes``: for a runtime whose first step is to
                decode those bytes to ``str`` (scikit-learn's), this is the
                same array without the encoding and the decoding row by row.
        """
        every = len(offsets) == self.rows  # offsets ascend: then they are all rows
        if self.layout == KEYED:
            arrays = {}
            for name, dtype in dtypes.items():
                array = (
                    self._text(name, offsets, text_as_str)
                    if dtype.kind == "O"
                    else None
                )
                if array is None:
                    column = self.arrays[name]
                    array = _as_input(
                        column if every else column[offsets], dtype, text_as_str
                    )
                if array is None:
                    return None
                arrays[name] = array
            return arrays
        if len(dtypes) != 1:
            return None
        ((name, dtype),) = dtypes.items()
        columns = [array if every else array[offsets] for array in self.arrays.values()]
        if self.layout == BARE:
            single = _as_input(columns[0], dtype, text_as_str)
            return None if single is None else {name: single}
        if dtype.kind == "O" or any(
            column.dtype.kind not in "if" for column in columns
        ):
            return None
        # numpy types a list of Python ints and floats as float64 (int64 when all
        # are ints), as vstack promotes the columns.
        stacked = _side_by_side(columns)
        if dtype.kind == "f":
            return {name: stacked.astype(dtype, copy=False)}  # a new array already
        matrix = _as_input(stacked, dtype, text_as_str)
        return None if matrix is None else {name: matrix}

    def _text(self, name: str, offsets: Array, as_str: bool) -> Array | None:
        """A text column's values as UTF-8 ``bytes`` (or ``str``), made by Arrow."""
        if self.source is None:
            return None
        column = self.source.column(name)
        if column.null_count or not (
            pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
        ):
            return None
        every = len(offsets) == self.rows
        if as_str:
            # The typed column holds the same str objects, made from the same
            # cells by Arrow when the chunk was read; a copy, as the model's
            # arrays are the call's own.
            typed = self.arrays[name]
            return (typed if every else typed[offsets]).copy()
        if not every:
            column = column.take(pa.array(offsets))
        binary = pa.large_binary() if pa.types.is_large_string(column.type) else None
        # The cast reuses the UTF-8 buffers; only the bytes objects are new.
        column = column.cast(binary or pa.binary())
        array: Array = column.to_numpy(zero_copy_only=False)
        return array

    def arrow_columns(
        self, offsets: Array
    ) -> dict[str, pa.Array | pa.ChunkedArray] | None:
        """These rows' columns as Arrow arrays, by column name; ``None``: mixed values.

        Every layout gives the file's own columns (a matrix input's rows keep
        their ``pixel_<i>`` columns, not one list column); unnamed columns are
        one ``instance`` column (a list column for list rows).
        """
        if not self.named:
            return self._instance_column(offsets)
        if self.source is not None:
            table = self.source_rows(offsets)
            return dict(zip(table.column_names, table.columns, strict=True))
        columns: dict[str, pa.Array] = {}
        for name, array in self.arrays.items():
            picked = array[offsets]
            if picked.dtype.kind in "ifb":
                columns[name] = pa.array(picked)
                continue
            try:
                columns[name] = pa.array(picked.tolist())
            except (pa.ArrowException, TypeError, ValueError):
                return None
        return columns

    def source_rows(self, offsets: Array) -> pa.Table:
        """These rows of a Parquet chunk's columns as read (``source`` must be set)."""
        assert self.source is not None
        if len(offsets) == self.rows:
            return self.source
        return self.source.take(pa.array(offsets))

    def _instance_column(self, offsets: Array) -> dict[str, pa.Array] | None:
        picked = [array[offsets] for array in self.arrays.values()]
        if self.layout == LIST:
            matrix = np.column_stack(picked)
            steps = np.arange(0, matrix.size + 1, matrix.shape[1], dtype=np.int32)
            flat = pa.array(np.ascontiguousarray(matrix).reshape(-1))
            return {"instance": pa.ListArray.from_arrays(pa.array(steps), flat)}
        (values,) = picked
        try:
            return {"instance": pa.array(values.tolist())}
        except (pa.ArrowException, TypeError, ValueError):
            return None

    def instance_texts(self, offsets: Array) -> list[bytes]:
        """The JSON text of each row's instance (rows that were read)."""
        if not len(offsets):
            return []
        columns = [array[offsets] for array in self.arrays.values()]
        if self.layout == LIST and all(column.dtype.kind == "f" for column in columns):
            matrix = np.column_stack(columns).astype(np.float64, copy=False)
            if np.isfinite(matrix).all():
                text = orjson.dumps(matrix, option=_OPTIONS)
                return [b"[" + row + b"]" for row in text[2:-2].split(b"],[")]
        tokens = [value_texts(column) for column in columns]
        if self.layout == BARE:
            return tokens[0]
        if self.layout == LIST:
            return [b"[" + b",".join(row) + b"]" for row in zip(*tokens, strict=True)]
        template = (
            b"{"
            + b",".join(
                orjson.dumps(name).replace(b"%", b"%%") + b":%b" for name in self.arrays
            )
            + b"}"
        )
        return [template % row for row in zip(*tokens, strict=True)]


def value_texts(column: Array) -> list[bytes]:
    """Each value's JSON text, as ``orjson`` writes the row's Python value.

    Non-finite floats are TF Serving's ``NaN``, ``Infinity``, ``-Infinity``.
    """
    kind = column.dtype.kind
    if kind == "f":
        values = column.astype(np.float64, copy=False)
        texts = orjson.dumps(values, option=_OPTIONS)[1:-1].split(b",")
        bad = np.flatnonzero(~np.isfinite(values))
        for index in bad.tolist():
            value = values[index]
            texts[index] = (
                b"NaN"
                if np.isnan(value)
                else b"Infinity"
                if value > 0
                else b"-Infinity"
            )
        return texts
    if kind == "i":
        return orjson.dumps(column.astype(np.int64, copy=False), option=_OPTIONS)[
            1:-1
        ].split(b",")
    if kind == "b":
        return [b"true" if value else b"false" for value in column.tolist()]
    return [orjson.dumps(value) for value in column.tolist()]


def object_array(values: list[Any]) -> Array:
    """A 1-D object array holding ``values`` as they are (lists stay lists)."""
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def _value(array: Array, offset: int, plain: bool) -> Any:
    value = array[offset]
    if array.dtype.kind == "f":
        number = float(value)
        if plain or np.isfinite(number):
            return number
        return (
            _NAN if np.isnan(number) else _INFINITY if number > 0 else _MINUS_INFINITY
        )
    if array.dtype.kind in "iub":
        return value.item()
    return value


def _as_input(column: Array, dtype: np.dtype[Any], text_as_str: bool) -> Array | None:
    """``column`` as the codec converts a list of its values to ``dtype``.

    ``text_as_str``: text stays ``str`` (see :meth:`TableColumns.model_inputs`).
    """
    kind = column.dtype.kind
    target = dtype.kind
    if dtype.kind == "O":
        if kind == "O" and all(type(value) is str for value in column.tolist()):
            if text_as_str:
                return column
            return object_array([value.encode("utf-8") for value in column.tolist()])
        return None
    if target == "b":
        return column.copy() if kind == "b" else None
    if target in "iu":
        if kind != "i":
            return None
        if column.dtype == dtype:
            return column.copy()
        info = np.iinfo(dtype)
        if len(column) and (column.min() < info.min or column.max() > info.max):
            return None
        return column.astype(dtype)
    if target == "f" and kind in "if":
        return column.astype(dtype)
    return None


def _side_by_side(columns: list[Array]) -> Array:
    """The columns as the columns of a C-ordered matrix: ``vstack(columns).T``."""
    rows = len(columns[0])
    # Stacking the columns as rows and transposing once costs less than
    # column_stack's strided writes (about 200 µs for 1,024 rows of 64
    # columns). Rows a power of two bytes apart (1,024 float32) put a matrix
    # row's values in one cache set, so the transposing copy misses on each:
    # padded by a cache line, the whole costs 55 against 90 µs.
    # The dtype vstack gives them (result_type takes at most 64 arrays).
    dtype = functools.reduce(np.promote_types, [column.dtype for column in columns])
    storage = np.empty((len(columns), rows + _ROW_PADDING), dtype)
    stacked = storage[:, :rows]
    for index, column in enumerate(columns):
        stacked[index] = column
    return np.array(stacked.T, order="C")
