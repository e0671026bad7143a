"""CSV text: rows split by pyarrow, bad rows kept in their place, cells typed.

Cells are read as text and typed by the signature (an input's dtype) or, for
other columns, by what the whole chunk holds (integers, else numbers, else
text), into one numpy array per column. An empty numeric cell is NaN (written
as TF Serving's JSON ``NaN`` token); a cell that cannot be read makes its row an
error row.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from servekit.batch.columns import Array, object_array
from servekit.batch.schema import BOOLEAN, FLOAT, INTEGER, TEXT

_CSV_BLOCK_BYTES = 1 << 20


@dataclass(frozen=True)
class BadLine:
    """A CSV row the parser could not split into the header's columns."""

    text: str
    message: str
    row: int
    """Its row number in the file (-1 when the parser gave no line number)."""


Piece: TypeAlias = "pa.RecordBatch | BadLine"


def csv_pieces(path: Path) -> Iterator[Piece]:
    """The file's rows in order: record batches, and the rows that could not be split.

    The parser reports a bad row with its line number while it parses the block
    holding it, before that block's batch comes out; the row goes back at its
    place among the batch's rows (a line is a row, unless a quoted cell holds a
    line break: then it lands next to it). Parsing runs on one thread, so every
    read yields the same sequence and row numbers, hence shards, are stable.
    """
    with path.open(newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle), None)
    if not header:
        return
    bad: list[BadLine] = []

    def skip(row: Any) -> str:
        where = f"line {row.number}: " if row.number is not None else ""
        # Line 1 is the header: line n holds row n - 2 (from 0).
        bad.append(
            BadLine(
                row.text,
                f"{where}expected {row.expected_columns} columns, got "
                f"{row.actual_columns}",
                row.number - 2 if row.number is not None else -1,
            )
        )
        return "skip"

    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=_CSV_BLOCK_BYTES, use_threads=False),
        parse_options=pacsv.ParseOptions(invalid_row_handler=skip),
        convert_options=pacsv.ConvertOptions(
            column_types=dict.fromkeys(header, pa.string()),
            strings_can_be_null=False,
        ),
    )
    position = 0
    for batch in reader:
        offset = 0
        for line in sorted(bad, key=lambda item: item.row):
            take = min(max(line.row - position, 0), batch.num_rows - offset)
            if take:
                yield batch.slice(offset, take)
                offset += take
                position += take
            yield line
            position += 1
        bad.clear()
        if offset < batch.num_rows:
            yield batch.slice(offset)
            position += batch.num_rows - offset
    yield from bad


def values_from_text(
    column: pa.ChunkedArray, name: str, kind: str | None
) -> tuple[Array, dict[int, str]]:
    """A text column typed as ``kind`` (inferred when ``None``), and its bad rows.

    Numbers come as ``float64`` (an empty cell is NaN) or ``int64``; a bad row
    holds a placeholder (its cell is reported in the error).
    """
    if kind is None:
        for candidate in (INTEGER, FLOAT):
            values, errors = values_from_text(column, name, candidate)
            if not errors:
                return values, errors
        kind = TEXT
    if kind == TEXT:
        # An object array of str made by Arrow (the reader makes no nulls).
        return column.to_numpy(zero_copy_only=False), {}
    if kind == BOOLEAN:
        lowered = pc.utf8_lower(column).to_pylist()
        errors = {
            index: f"column {name}: {text!r} is not true or false"
            for index, text in enumerate(lowered)
            if text not in ("true", "false")
        }
        return np.array([text == "true" for text in lowered], dtype=bool), errors
    target = pa.float64() if kind == FLOAT else pa.int64()
    blanks = pc.equal(pc.utf8_trim_whitespace(column), "")
    try:
        typed = pc.cast(pc.if_else(blanks, None, column), target)
    except pa.ArrowInvalid:
        return _values_one_by_one(column, name, kind)
    if kind == FLOAT:
        return typed.fill_null(math.nan).to_numpy(), {}
    errors = dict.fromkeys(
        np.flatnonzero(typed.is_null().to_numpy(zero_copy_only=False)).tolist(),
        f"column {name}: empty cell where an integer is expected",
    )
    return typed.fill_null(0).to_numpy(), errors


def _values_one_by_one(
    column: pa.ChunkedArray, name: str, kind: str
) -> tuple[Array, dict[int, str]]:
    values: list[Any] = []
    errors: dict[int, str] = {}
    convert = float if kind == FLOAT else int
    for index, text in enumerate(column.to_pylist()):
        stripped = (text or "").strip()
        try:
            if not stripped and kind == FLOAT:
                values.append(math.nan)
                continue
            value = convert(stripped)
        except ValueError:
            wanted = "a number" if kind == FLOAT else "an integer"
            errors[index] = f"column {name}: {text!r} is not {wanted}"
            values.append(0)
            continue
        values.append(value)
    if kind == FLOAT:
        return np.array(values, dtype=np.float64), errors
    try:
        return np.array(values, dtype=np.int64), errors
    except OverflowError:
        # Beyond int64: Python ints, as a JSON reader would hold them.
        return object_array(values), errors
