"""Input files: find them, count their rows, stream a row range in bounded chunks.

A job's input is one file or a folder of files (read in name order); rows are
numbered across them in that order, which is the order of the output. Every
reader streams: CSV and Parquet through pyarrow's batch readers, JSON Lines line
by line, so memory holds one chunk whatever the file size.

CSV cells are typed from their text as :mod:`servekit.batch.csvtext` says; a
row that cannot be read is an error row and the other rows go on.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from servekit_protocol import json_codec
from servekit_protocol.errors import InvalidArgument

from servekit.batch.columns import (
    BARE,
    KEYED,
    LIST,
    Array,
    TableColumns,
    object_array,
)
from servekit.batch.counting import count_csv_rows
from servekit.batch.csvtext import (
    BadLine,
    Piece,
    csv_pieces,
    values_from_text,
)
from servekit.batch.jsonrows import json_columns, parse_instance, request_value
from servekit.batch.schema import InputSchema
from servekit.console import CommandError

CSV = "csv"
JSONL = "jsonl"
PARQUET = "parquet"
SUFFIXES = {
    ".csv": CSV,
    ".jsonl": JSONL,
    ".ndjson": JSONL,
    ".json": JSONL,
    ".parquet": PARQUET,
    ".pq": PARQUET,
}


@dataclass(frozen=True)
class InputFile:
    """One input file and the rows it holds."""

    path: Path
    format: str
    rows: int


@dataclass
class Chunk:
    """Consecutive rows of the input.

    Attributes:
        start: The job-wide number of the first row.
        instances: One JSON value per row, as sent to the model (an
            ``orjson.Fragment`` holding a JSON Lines row as written); empty when
            ``table`` holds the rows.
        read_errors: Offset in the chunk -> why that row could not be read; its
            instance is then the raw text.
        lines: The JSON Lines rows as read (``None`` for other formats); the
            instances written are these texts.
        sent: What is sent for each row when it differs from its instance: the
            keys (or a table's columns) that no input of the signature takes
            (an id, the label) stay in the output's instance but are not sent.
        table: The rows as typed columns (CSV and Parquet chunks, and JSON
            Lines chunks whose rows share one shape).
    """

    start: int
    instances: list[Any]
    read_errors: dict[int, str] = field(default_factory=dict)
    lines: list[bytes] | None = None
    sent: list[Any] | None = None
    table: TableColumns | None = None

    def request(self, offset: int) -> Any:
        """What row ``offset`` sends to the model."""
        if self.table is not None:
            return self.table.request(offset)
        return (self.sent if self.sent is not None else self.instances)[offset]

    def instance(self, offset: int) -> Any:
        """Row ``offset``'s instance as the JSON output writes it."""
        if self.table is not None and self.lines is None:
            return self.table.instance(offset)
        return self.instances[offset]

    def instance_value(self, offset: int) -> Any:
        """Row ``offset``'s instance as plain Python values (for CSV/Parquet output)."""
        if self.lines is not None and offset not in self.read_errors:
            return json_codec.loads(self.lines[offset])
        if self.table is not None and self.lines is None:
            return self.table.instance(offset, plain=True)
        value = self.instances[offset]
        if isinstance(value, dict):
            return {key: _plain(item) for key, item in value.items()}
        if isinstance(value, list):
            return [_plain(item) for item in value]
        return _plain(value)

    def instance_texts(self, offsets: list[int]) -> list[bytes]:
        """The JSON text of these rows' instances (rows that were read)."""
        if self.lines is not None:
            lines = self.lines
            return [lines[offset] for offset in offsets]
        if self.table is not None:
            return self.table.instance_texts(np.asarray(offsets, dtype=np.intp))
        return [orjson.dumps(self.instances[offset]) for offset in offsets]

    def read_offsets(self) -> list[int]:
        """The offsets of the rows that were read, in order."""
        if not self.read_errors:
            return list(range(len(self)))
        return [offset for offset in range(len(self)) if offset not in self.read_errors]

    def __len__(self) -> int:
        return self.table.rows if self.table is not None else len(self.instances)


def discover(path: Path) -> list[InputFile]:
    """The input files under ``path`` with their row counts (this reads them once).

    Raises:
        CommandError: No such path, no readable input file, an unknown format.
    """
    if path.is_dir():
        candidates = sorted(
            entry
            for entry in path.iterdir()
            if entry.is_file()
            and not entry.name.startswith(".")
            and entry.suffix.lower() in SUFFIXES
        )
        if not candidates:
            raise CommandError(
                f"{path}: no input files ({', '.join(sorted(SUFFIXES))}) in the folder"
            )
    elif path.is_file():
        if path.suffix.lower() not in SUFFIXES:
            raise CommandError(
                f"{path}: unknown input format; use one of {', '.join(sorted(SUFFIXES))}"
            )
        candidates = [path]
    else:
        raise CommandError(f"{path}: no such file or folder")
    files = []
    for candidate in candidates:
        fmt = SUFFIXES[candidate.suffix.lower()]
        files.append(InputFile(candidate, fmt, count_rows(candidate, fmt)))
    return files


def count_rows(path: Path, fmt: str) -> int:
    """Rows of one file (Parquet: from its footer; others: from line breaks).

    JSON Lines: its lines that hold more than whitespace (no row is parsed).

    A CSV file whose lines are not provably its rows is parsed to count them
    (:mod:`servekit.batch.counting`).

    Raises:
        CommandError: The file cannot be read as ``fmt``.
    """
    try:
        if fmt == PARQUET:
            return int(pq.ParquetFile(path).metadata.num_rows)
        if fmt == JSONL:
            with path.open("rb") as handle:
                return sum(1 for line in handle if line.strip())
        counted = count_csv_rows(path)
        if counted is not None:
            return counted
        return sum(
            piece.num_rows if isinstance(piece, pa.RecordBatch) else 1
            for piece in csv_pieces(path)
        )
    except (OSError, pa.ArrowException) as exc:
        raise CommandError(f"{path}: cannot read as {fmt}: {exc}") from exc


def read_chunks(
    files: list[InputFile],
    start: int,
    stop: int,
    chunk_rows: int,
    schema: InputSchema,
) -> Iterator[Chunk]:
    """Rows ``start`` to ``stop`` (job-wide numbers) in chunks of ``chunk_rows``.

    Raises:
        CommandError: A file cannot be read.
    """
    offset = 0
    position = start
    for source in files:
        first, last = offset, offset + source.rows
        offset = last
        if last <= position or first >= stop:
            continue
        local_start = position - first
        local_stop = min(stop, last) - first
        try:
            for chunk in _file_chunks(
                source, local_start, local_stop, chunk_rows, schema
            ):
                chunk.start += first
                position = chunk.start + len(chunk)
                yield chunk
        except (OSError, pa.ArrowException) as exc:
            raise CommandError(f"{source.path}: cannot read: {exc}") from exc
        if position >= stop:
            return


def _file_chunks(
    source: InputFile, start: int, stop: int, chunk_rows: int, schema: InputSchema
) -> Iterator[Chunk]:
    if source.format == JSONL:
        yield from _jsonl_chunks(source.path, start, stop, chunk_rows, schema)
        return
    pieces: Iterator[Piece] = (
        csv_pieces(source.path)
        if source.format == CSV
        else iter(pq.ParquetFile(source.path).iter_batches(batch_size=chunk_rows))
    )
    from_text = source.format == CSV
    row = 0
    pending: list[Piece] = []
    pending_rows = 0
    chunk_start = start
    for piece in pieces:
        size = piece.num_rows if isinstance(piece, pa.RecordBatch) else 1
        piece_first, row = row, row + size
        if row <= start:
            continue
        if piece_first >= stop:
            break
        if isinstance(piece, pa.RecordBatch):
            first = max(start, piece_first)
            piece = piece.slice(first - piece_first, min(stop, row) - first)
            size = piece.num_rows
        pending.append(piece)
        pending_rows += size
        while pending_rows >= chunk_rows:
            head, pending = _split(pending, chunk_rows)
            yield _pieces_chunk(head, chunk_start, from_text, schema)
            chunk_start += chunk_rows
            pending_rows -= chunk_rows
    if pending_rows:
        yield _pieces_chunk(pending, chunk_start, from_text, schema)
    if row < stop:
        # The count came from line breaks, the rows from the parser: they
        # disagree only if the file changed since it was counted.
        raise CommandError(
            f"{source.path}: {row} rows read where {source.rows} were counted "
            "(did the file change while the job ran?)"
        )


def _split(pieces: list[Piece], rows: int) -> tuple[list[Piece], list[Piece]]:
    head: list[Piece] = []
    for position, piece in enumerate(pieces):
        if rows == 0:
            return head, pieces[position:]
        if isinstance(piece, BadLine):
            head.append(piece)
            rows -= 1
        elif piece.num_rows <= rows:
            head.append(piece)
            rows -= piece.num_rows
        else:
            head.append(piece.slice(0, rows))
            return head, [piece.slice(rows), *pieces[position + 1 :]]
    return head, []


def _pieces_chunk(
    pieces: list[Piece], start: int, from_text: bool, schema: InputSchema
) -> Chunk:
    batches = [piece for piece in pieces if isinstance(piece, pa.RecordBatch)]
    if len(batches) == len(pieces):
        return _table_chunk(pa.Table.from_batches(batches), start, from_text, schema)
    if not batches:
        return Chunk(
            start,
            [piece.text for piece in pieces if isinstance(piece, BadLine)],
            {offset: piece.message for offset, piece in enumerate(pieces)},
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
    chunk = _table_chunk(pa.Table.from_batches(rows), start, from_text, schema)
    for offset, line in lines.items():
        chunk.read_errors[offset] = line.message
        if chunk.table is not None:
            chunk.table.error_instances[offset] = line.text
        else:
            chunk.instances[offset] = line.text
    return chunk


def _jsonl_chunks(
    path: Path, start: int, stop: int, chunk_rows: int, schema: InputSchema
) -> Iterator[Chunk]:
    row = 0
    lines: list[bytes] = []
    chunk_start = start
    with path.open("rb") as handle:
        for line in handle:
            text = line.strip()
            if not text:
                continue
            row += 1
            if row <= start:
                continue
            if row > stop:
                break
            lines.append(text)
            if len(lines) == chunk_rows:
                yield _jsonl_chunk(lines, chunk_start, schema)
                chunk_start += len(lines)
                lines = []
    if lines:
        yield _jsonl_chunk(lines, chunk_start, schema)
    if row < stop:
        raise CommandError(
            f"{path}: {row} rows read where {stop} or more were counted "
            "(did the file change while the job ran?)"
        )


def _jsonl_chunk(lines: list[bytes], start: int, schema: InputSchema) -> Chunk:
    """A chunk of JSON Lines rows: typed columns where the rows share a shape."""
    chunk = Chunk(start, [], lines=lines)
    try:
        values = [orjson.loads(line) for line in lines]
        if None in values:
            raise ValueError("a row is null")
        chunk.instances = [orjson.Fragment(line) for line in lines]
    except (orjson.JSONDecodeError, ValueError):
        # Row by row, as the codec reads them: NaN tokens, and why a row is bad.
        values = []
        for line in lines:
            try:
                values.append(parse_instance(line))
                chunk.instances.append(orjson.Fragment(line))
            except InvalidArgument as exc:
                chunk.read_errors[len(chunk.instances)] = exc.message
                chunk.instances.append(line.decode("utf-8", errors="replace"))
                values.append(None)
    read = [
        value for offset, value in enumerate(values) if offset not in chunk.read_errors
    ]
    if not read:
        return chunk
    if chunk.read_errors:
        # A row that could not be read stands in as a copy of one that was.
        values = [
            read[0] if offset in chunk.read_errors else value
            for offset, value in enumerate(values)
        ]
    table = json_columns(values, schema)
    if table is not None:
        table.error_instances = {
            offset: chunk.instances[offset] for offset in chunk.read_errors
        }
        chunk.table = table
        return chunk
    inputs = set(schema.inputs)
    if any(isinstance(value, dict) and value.keys() > inputs for value in read):
        chunk.sent = [
            {name: request_value(value[name]) for name in schema.inputs}
            if offset not in chunk.read_errors
            and isinstance(value, dict)
            and value.keys() > inputs
            else chunk.instances[offset]
            for offset, value in enumerate(values)
        ]
    return chunk


def _table_chunk(
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
        values, errors = _typed_values(table.column(name), name, kind, from_text)
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
            index: {name: _cell_text(table.column(name)[index]) for name in names}
            for index in read_errors
        },
    )
    return Chunk(start, [], read_errors, table=columns)


def _typed_values(
    column: pa.ChunkedArray, name: str, kind: str | None, from_text: bool
) -> tuple[Array, dict[int, str]]:
    """A column as an array of ``kind`` (inferred when ``None``), and bad rows."""
    if from_text:
        return values_from_text(column, name, kind)
    if pa.types.is_floating(column.type):
        return column.fill_null(math.nan).to_numpy().astype(np.float64), {}
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
    return object_array(column.to_pylist()), {}


_TOKENS = {b"NaN": math.nan, b"Infinity": math.inf, b"-Infinity": -math.inf}


def _plain(value: Any) -> Any:
    if isinstance(value, orjson.Fragment):
        # Only the readers make fragments here, and only for these tokens.
        return _TOKENS.get(orjson.dumps(value), math.nan)
    return value


def _cell_text(cell: pa.Scalar) -> Any:
    value = cell.as_py()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
