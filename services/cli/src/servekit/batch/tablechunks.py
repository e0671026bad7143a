"""CSV and Parquet rows as a chunk of typed columns.

A chunk's record batches (and, for CSV, the rows the parser could not split)
become one :class:`~servekit.batch.columns.TableColumns`: each column typed as
the row instances would be, a read error for each row that cannot be, and, for
Parquet, the record batch itself, whose columns a table of results takes as
they were read.

A Parquet file is decoded in record batches of many chunks' rows
(:class:`TablePiece`): each column is converted once for all of them, and a
chunk's columns are views of those arrays.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from servekit.batch.chunks import Chunk
from servekit.batch.columns import BARE, KEYED, LIST, Array, TableColumns, object_array
from servekit.batch.csvtext import BadLine, Piece, values_from_text
from servekit.batch.schema import InputSchema
from servekit.console import CommandError


class TablePiece:
    """Consecutive rows already converted to typed columns (no read errors)."""

    def __init__(self, columns: TableColumns, first: int = 0, rows: int = -1) -> None:
        self.columns = columns
        self.first = first
        self.num_rows = columns.rows - first if rows < 0 else rows

    @classmethod
    def converted(cls, batch: pa.RecordBatch, schema: InputSchema) -> TablePiece | None:
        """A Parquet record batch's columns, typed; ``None``: a batch with no columns."""
        if not batch.num_columns:
            return None
        chunk = table_chunk(pa.Table.from_batches([batch]), 0, False, schema)
        assert chunk.table is not None and not chunk.read_errors
        return cls(chunk.table)

    def slice(self, first: int, rows: int | None = None) -> TablePiece:
        """Rows ``first`` to ``first + rows`` of the piece (to its end: ``None``)."""
        count = self.num_rows - first if rows is None else rows
        return TablePiece(self.columns, self.first + first, count)

    def window(self) -> TableColumns:
        """The piece's rows as columns of their own (views of the converted arrays)."""
        if self.first == 0 and self.num_rows == self.columns.rows:
            return self.columns
        return self.columns.window(self.first, self.num_rows)


def pieces_chunk(
    pieces: list[Piece | TablePiece], start: int, from_text: bool, schema: InputSchema
) -> Chunk:
    converted = [piece for piece in pieces if isinstance(piece, TablePiece)]
    if converted:
        assert len(converted) == len(pieces)
        columns = TableColumns.joined([piece.window() for piece in converted])
        return Chunk(start, [], table=columns)
    batches = [piece for piece in pieces if isinstance(piece, pa.RecordBatch)]
    if len(batches) == len(pieces):
        return table_chunk(pa.Table.from_batches(batches), start, from_text, schema)
    if not batches:
        bad = [piece for piece in pieces if isinstance(piece, BadLine)]
        return Chunk(
            start,
            [piece.text for piece in bad],
            {offset: piece.message for offset, piece in enumerate(bad)},
        )
    # A row that could not be split holds a copy of a row that was in the
    # columns (so it types every column as the other rows do) and is an error
    # row with its line as its instance.
    stand_in = batches[0].slice(0, 1)
    lines: dict[int, BadLine] = {}
    rows: list[pa.RecordBatch] = []
    count = 0
    for piece in pieces:
        if isinstance(piece, BadLine):
            lines[count] = piece
            rows.append(stand_in)
            count += 1
        else:
            rows.append(piece)
            count += piece.num_rows
    chunk = table_chunk(pa.Table.from_batches(rows), start, from_text, schema)
    for offset, line in lines.items():
        chunk.read_errors[offset] = line.message
        if chunk.table is not None:
            chunk.table.error_instances[offset] = line.text
        else:
            chunk.instances[offset] = line.text
    return chunk


def table_chunk(
    table: pa.Table, start: int, from_text: bool, schema: InputSchema
) -> Chunk:
    names = table.column_names
    keyed = schema.keyed_by(names)
    single = schema.single_kind()
    if not keyed and single is None:
        missing = [name for name in schema.inputs if name not in names]
        raise CommandError(
            f"the input has no column for input(s) {', '.join(missing)} of signature "
            f"{schema.signature_name!r} (columns: {', '.join(names)})"
        )
    if not names:
        return Chunk(start, [{} for _ in range(table.num_rows)])
    read_errors: dict[int, str] = {}
    arrays: dict[str, Array] = {}
    for name in names:
        kind = schema.inputs.get(name) if keyed else single
        values, errors = typed_values(table.column(name), name, kind, from_text)
        arrays[name] = values
        for index, message in errors.items():
            read_errors.setdefault(index, message)
    # One unnamed column: its values are the instances (TF Serving's bare row
    # values), not one-element lists.
    layout = KEYED if keyed else BARE if len(names) == 1 else LIST
    columns = TableColumns(
        arrays,
        layout,
        list(schema.inputs) if keyed else names,
        {
            index: {name: cell_text(table.column(name)[index]) for name in names}
            for index in read_errors
        },
        source=None if from_text else _as_read(table),
    )
    return Chunk(start, [], read_errors, table=columns)


def _as_read(table: pa.Table) -> pa.Table:
    """A Parquet chunk's columns as read (a null number NaN, as in the instance)."""
    for index, column in enumerate(table.columns):
        if column.null_count and pa.types.is_floating(column.type):
            table = table.set_column(
                index, table.field(index), column.fill_null(math.nan)
            )
    return table


def typed_values(
    column: pa.ChunkedArray, name: str, kind: str | None, from_text: bool
) -> tuple[Array, dict[int, str]]:
    """A column as an array of ``kind`` (inferred when ``None``), and bad rows."""
    if from_text:
        return values_from_text(column, name, kind)
    if pa.types.is_floating(column.type):
        if column.null_count:
            column = column.fill_null(math.nan)
        # float32 stays float32: every use of the values (the model's dtype,
        # JSON text, a float64 column) converts it exactly.
        array = column.to_numpy()
        if array.dtype.itemsize < 4:
            array = array.astype(np.float64)
        return array, {}
    if column.null_count == 0 and (
        pa.types.is_boolean(column.type)
        or pa.types.is_signed_integer(column.type)
        or (
            pa.types.is_unsigned_integer(column.type)
            and (len(column) == 0 or pc.max(column).as_py() <= np.iinfo(np.int64).max)
        )
    ):
        # The values a JSON reader would hold: int64 or bool.
        array = column.to_numpy()
        return (array if array.dtype.kind == "b" else array.astype(np.int64)), {}
    if column.null_count == 0 and (
        pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
    ):
        # An object array of str, made by Arrow rather than a Python loop.
        return column.to_numpy(zero_copy_only=False), {}
    return object_array(column.to_pylist()), {}


def cell_text(cell: pa.Scalar) -> Any:
    value = cell.as_py()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
