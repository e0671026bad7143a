"""CSV and Parquet results: a chunk's answered rows as one Arrow table, and CSV text.

The table holds the instance's columns (a CSV or Parquet input's own columns;
a JSON Lines object's keys, or ``instance`` for any other JSON value) and the
prediction columns: ``prediction`` for a model with one output,
``prediction_<output>`` for each output otherwise. Typed columns and model
outputs go in as arrays; Python values are made only for rows that were not
read as columns or not answered as arrays.

CSV text is written a column at a time, as :mod:`csv` writes with its default
dialect (``\\r\\n`` line ends, a cell quoted only when it holds a comma, a
quote or a line break), except numbers: a ``float64`` is written as the JSON
results write it (the shortest text that reads back to the same ``float64``,
e.g. ``0.00001`` where Python's ``repr`` gives ``1e-05``), NaN and infinities
as ``nan``, ``inf`` and ``-inf``. A list or object cell is its JSON text.
"""

from __future__ import annotations

import csv
import io
import itertools
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray
from servekit_protocol import json_codec

from servekit.batch.answers import prediction_columns, prediction_texts
from servekit.batch.outcomes import Encoded, Outcome
from servekit.batch.sources import Chunk

PREDICTION = "prediction"
INSTANCE = "instance"
_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
_NEEDS_QUOTES = frozenset(',"\r\n')
_QUOTED_PATTERN = '[,"\r\n]'
"""What :data:`_NEEDS_QUOTES` holds, as a pattern."""


def results_table(
    chunk: Chunk,
    offsets: NDArray[np.intp],
    outputs: dict[str, NDArray[Any]] | None,
    predictions: list[Outcome] | None,
) -> pa.Table:
    """The rows at ``offsets`` with their predictions: ``outputs`` (arrays) or
    ``predictions`` (one outcome per row)."""
    answers: dict[str, Any] | None = None
    if outputs is not None:
        answers = prediction_columns(outputs, len(offsets))
        if answers is not None and len(answers) == 1:
            # One output: the row-format answer is its value, not an object.
            answers = {"": next(iter(answers.values()))}
        elif answers is None:
            predictions = [
                Encoded(text) for text in prediction_texts(outputs, len(offsets))
            ]
    if answers is None:
        assert predictions is not None
        answers = _answer_columns([_value(item) for item in predictions])
    if chunk.table is not None and chunk.table.named and chunk.table.source is not None:
        # A Parquet chunk's own table: adding columns to it costs a fraction of
        # building a table of all its columns again (47 against 230 µs for
        # digits' 64 columns).
        table = chunk.table.source_rows(offsets)
        for name, column in answers.items():
            title = f"{PREDICTION}_{name}" if name else PREDICTION
            index = table.schema.get_field_index(title)
            table = (
                table.append_column(title, column)
                if index < 0
                else table.set_column(index, title, column)
            )
        return table
    columns = _instance_columns(chunk, offsets)
    for name, column in answers.items():
        columns[f"{PREDICTION}_{name}" if name else PREDICTION] = column
    return pa.table(columns)


def _instance_columns(chunk: Chunk, offsets: NDArray[np.intp]) -> dict[str, Any]:
    if chunk.table is not None:
        columns = chunk.table.arrow_columns(offsets)
        if columns is not None:
            return dict(columns)
    rows = [chunk.instance_value(offset) for offset in offsets.tolist()]
    if rows and all(isinstance(row, dict) for row in rows):
        table = pa.Table.from_pylist(rows)
    else:
        table = pa.table({INSTANCE: pa.array(rows)})
    return {name: table.column(name) for name in table.column_names}


def _answer_columns(values: list[Any]) -> dict[str, Any]:
    """Prediction values by output: an object holds one entry per output."""
    if values and all(isinstance(value, dict) for value in values):
        table = pa.Table.from_pylist(values)
        return {name: table.column(name) for name in table.column_names}
    return {"": pa.array(values)}


def _value(prediction: Any) -> Any:
    if isinstance(prediction, Encoded):
        return json_codec.loads(prediction.text)
    return prediction


def csv_header(names: list[str]) -> bytes:
    """The header line, as :mod:`csv` writes it."""
    text = io.StringIO()
    csv.writer(text).writerow(names)
    return text.getvalue().encode("utf-8")


def csv_rows(table: pa.Table) -> bytes:
    """The table's rows as CSV lines (no header)."""
    rows = table.num_rows
    if not rows or not table.num_columns:
        return b""
    segments = _segment_texts(table.columns)
    width = len(segments)
    parts: list[bytes] = [b","] * (2 * width * rows)
    parts[2 * width - 1 :: 2 * width] = [b"\r\n"] * rows
    for position, texts in enumerate(segments):
        parts[2 * position :: 2 * width] = texts
    return b"".join(parts)


def _segment_texts(columns: list[pa.ChunkedArray]) -> list[list[bytes]]:
    """Each row's text of consecutive columns: one text a row for each run of
    numeric columns of one kind (their cells joined by commas), one a cell
    otherwise.

    A run is written as one matrix: orjson writes each number of a matrix as it
    writes the number alone, so a row of the matrix's text is the row's cells
    as :func:`cell_texts` writes them (``digits``' 64 pixel columns: one piece
    a row to join instead of 64, and one call instead of 64).
    """
    segments: list[list[bytes]] = []
    for kind, group in itertools.groupby(columns, key=_number_kind):
        members = list(group)
        texts = (
            _run_texts([member.to_numpy() for member in members], kind)
            if kind and len(members) > 1
            else None
        )
        if texts is not None:
            segments.append(texts)
        else:
            segments.extend(
                _list_texts(member) or cell_texts(member) for member in members
            )
    return segments


def _number_kind(column: pa.ChunkedArray) -> str:
    """``f`` or ``i`` for a column whose cells are numbers of that kind, no null."""
    if column.null_count:
        return ""
    if pa.types.is_floating(column.type):
        return "f"
    return "i" if pa.types.is_integer(column.type) else ""


def _run_texts(run: list[NDArray[Any]], kind: str) -> list[bytes] | None:
    """The cells of a run of numeric columns, a row's joined; ``None`` when a
    float is NaN or infinite (its CSV text is not orjson's)."""
    matrix = _matrix(run, kind)
    if matrix is None:
        return None
    return orjson.dumps(matrix, option=_OPTIONS)[2:-2].split(b"],[")


def _list_texts(column: pa.ChunkedArray) -> list[bytes] | None:
    """A list column's cells as :func:`cell_texts` writes them (the list's JSON,
    quoted when it holds a comma), when the lists are all as long and hold
    numbers of one kind, no null; ``None`` otherwise."""
    if column.null_count or not (
        pa.types.is_list(column.type) or pa.types.is_large_list(column.type)
    ):
        return None
    values = pc.list_flatten(column)
    kind = _number_kind(values)
    lengths = pc.list_value_length(column)
    width = pc.min(lengths).as_py()
    if (
        not kind
        # A Python int past int64's range, where the matrix's int64 would wrap.
        or pa.types.is_uint64(values.type)
        or not width
        or pc.max(lengths).as_py() != width
    ):
        return None
    texts = _run_texts([values.to_numpy().reshape(-1, width)], kind)
    if texts is None:
        return None
    if width == 1:
        return [b"[" + text + b"]" for text in texts]
    return [b'"[' + text + b']"' for text in texts]


def _matrix(parts: list[NDArray[Any]], kind: str) -> NDArray[Any] | None:
    """Columns (1-D) or one block (2-D) as a C-ordered matrix of ``float64`` or
    ``int64``, each converted as :func:`cell_texts` converts a column; ``None``
    when a float is NaN or infinite."""
    target = np.float64 if kind == "f" else np.int64
    if len(parts) == 1 and parts[0].ndim == 2:
        matrix = np.ascontiguousarray(parts[0], dtype=target)
    else:
        # Stacked as rows and transposed once: cheaper than column_stack's
        # strided writes.
        stacked = np.vstack([part.astype(target, copy=False) for part in parts])
        matrix = np.ascontiguousarray(stacked.T)
    if kind == "f" and not np.isfinite(matrix).all():
        return None
    return matrix


def cell_texts(column: pa.ChunkedArray | pa.Array) -> list[bytes]:
    """Each cell of ``column`` as CSV text (a null is an empty cell)."""
    kind = column.type
    if column.null_count == 0:
        if pa.types.is_floating(kind):
            return _float_texts(column.to_numpy().astype(np.float64, copy=False))
        if pa.types.is_integer(kind):
            values = column.to_numpy().astype(np.int64, copy=False)
            return orjson.dumps(values, option=_OPTIONS)[1:-1].split(b",")
        if pa.types.is_boolean(kind):
            return [b"True" if value else b"False" for value in column.to_pylist()]
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            return _string_texts(column)
    texts: list[bytes] = []
    for value in column.to_pylist():
        if value is None:
            texts.append(b"")
        elif isinstance(value, str):
            texts.append(_quoted(value))
        elif isinstance(value, float):
            texts.append(_float_texts(np.array([value]))[0])
        elif isinstance(value, bool):
            texts.append(b"True" if value else b"False")
        elif isinstance(value, int):
            texts.append(str(value).encode())
        else:
            texts.append(_quoted(orjson.dumps(value).decode()))
    return texts


def _float_texts(values: NDArray[np.float64]) -> list[bytes]:
    if not len(values):
        return []
    finite = np.isfinite(values)
    texts = orjson.dumps(np.where(finite, values, 0.0), option=_OPTIONS)[1:-1].split(
        b","
    )
    for index in np.flatnonzero(~finite).tolist():
        value = values[index]
        texts[index] = b"nan" if np.isnan(value) else b"inf" if value > 0 else b"-inf"
    return texts


def _string_texts(column: pa.ChunkedArray | pa.Array) -> list[bytes]:
    """Text cells (no null), quoted as :func:`_quoted` quotes them, by Arrow."""
    quote = pc.match_substring_regex(column, _QUOTED_PATTERN)
    if pc.any(quote).as_py():
        doubled = pc.replace_substring(column, '"', '""')
        mark = pa.scalar('"', column.type)
        joined = pc.binary_join_element_wise(
            mark, doubled, mark, pa.scalar("", column.type)
        )
        column = pc.if_else(quote, joined, column)
    binary = pa.large_binary() if pa.types.is_large_string(column.type) else None
    texts: list[bytes] = (
        column.cast(binary or pa.binary()).to_numpy(zero_copy_only=False).tolist()
    )
    return texts


def _quoted(text: str) -> bytes:
    if _NEEDS_QUOTES.isdisjoint(text):
        return text.encode("utf-8")
    return ('"' + text.replace('"', '""') + '"').encode("utf-8")
