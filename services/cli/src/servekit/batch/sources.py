"""Input files: find them, count their rows, stream a row range in bounded chunks.

A job's input is one file or a folder of files (read in name order); rows are
numbered across them in that order, which is the order of the output. Every
reader streams: CSV and Parquet through pyarrow's batch readers, JSON Lines line
by line, so memory holds one chunk whatever the file size.

CSV cells are typed from their text as :mod:`servekit.batch.csvtext` says; a
row that cannot be read is an error row and the other rows go on.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from servekit_protocol.errors import InvalidArgument

from servekit.batch.chunks import Chunk
from servekit.batch.counting import count_csv_rows
from servekit.batch.csvtext import BadLine, Piece, csv_pieces
from servekit.batch.jsonrows import json_columns, parse_instance, request_value
from servekit.batch.schema import InputSchema
from servekit.batch.tablechunks import TablePiece, pieces_chunk
from servekit.console import CommandError

__all__ = ["Chunk", "InputFile", "discover", "read_chunks", "read_ranges"]

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


READ_BYTES = 8 << 20
"""Decoded bytes of a Parquet file read at once, at most, unless one chunk is larger."""
READ_CHUNKS = 32
"""Chunks' rows of a Parquet file read at once, at most: each read, and each
column's conversion to numpy, costs the same for 1,024 rows as for many more,
so a wide file (``digits``' 64 columns) read a chunk at a time spends more on
that than on decoding."""

_Piece: TypeAlias = "Piece | TablePiece"
"""Rows as read: Parquet's converted batches, CSV's batches and lines."""

RowRange = tuple[int, int]
"""First row and row past the last, job-wide numbers."""


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
    for _, chunk in read_ranges(files, [(start, stop)], chunk_rows, schema):
        yield chunk


def read_ranges(
    files: list[InputFile],
    ranges: Sequence[RowRange],
    chunk_rows: int,
    schema: InputSchema,
) -> Iterator[tuple[int, Chunk]]:
    """The rows of each range in chunks of ``chunk_rows``, with the range's index.

    ``ranges`` are ascending and disjoint (a job's output shards). Each file is
    opened once and read forward from the first row any range needs (a Parquet
    file from that row's row group), so a job of many shards reads its input
    once, not once a shard. A chunk holds rows of one range and one file.

    Raises:
        CommandError: A file cannot be read.
    """
    offset = 0
    for source in files:
        first, last = offset, offset + source.rows
        offset = last
        local = [
            (index, max(start, first) - first, min(stop, last) - first)
            for index, (start, stop) in enumerate(ranges)
            if start < last and stop > first and start < stop
        ]
        if not local:
            continue
        try:
            for index, chunk in _file_chunks(source, local, chunk_rows, schema):
                chunk.start += first
                yield index, chunk
        except (OSError, pa.ArrowException) as exc:
            raise CommandError(f"{source.path}: cannot read: {exc}") from exc


_LocalRange = tuple[int, int, int]
"""A range's index, and its first row and row past the last in one file."""


def _file_chunks(
    source: InputFile,
    ranges: list[_LocalRange],
    chunk_rows: int,
    schema: InputSchema,
) -> Iterator[tuple[int, Chunk]]:
    if source.format == JSONL:
        yield from _jsonl_chunks(source.path, ranges, chunk_rows, schema)
        return
    row = 0
    pieces: Iterator[_Piece]
    if source.format == CSV:
        pieces = csv_pieces(source.path)
    else:
        row, pieces = _parquet_batches(source.path, ranges, chunk_rows, schema)
    from_text = source.format == CSV
    remaining = iter(ranges)
    current = next(remaining, None)
    pending: list[_Piece] = []
    pending_rows = 0
    chunk_start = 0
    for piece in pieces:
        size = 1 if isinstance(piece, BadLine) else piece.num_rows
        piece_first, row = row, row + size
        # A piece can hold the end of one range and the start of the next.
        while current is not None and row > current[1]:
            index, start, stop = current
            low, high = max(start, piece_first), min(stop, row)
            if low < high:
                if not pending:
                    chunk_start = low
                pending.append(
                    piece
                    if isinstance(piece, BadLine)
                    else piece.slice(low - piece_first, high - low)
                )
                pending_rows += high - low
                while pending_rows >= chunk_rows:
                    head, pending = _split(pending, chunk_rows)
                    yield index, pieces_chunk(head, chunk_start, from_text, schema)
                    chunk_start += chunk_rows
                    pending_rows -= chunk_rows
            if row < stop:
                break
            if pending_rows:
                yield index, pieces_chunk(pending, chunk_start, from_text, schema)
                pending, pending_rows = [], 0
            current = next(remaining, None)
        if current is None:
            return
    # The count came from line breaks, the rows from the parser: they disagree
    # only if the file changed since it was counted.
    raise CommandError(
        f"{source.path}: {row} rows read where {source.rows} were counted "
        "(did the file change while the job ran?)"
    )


def _parquet_batches(
    path: Path, ranges: list[_LocalRange], chunk_rows: int, schema: InputSchema
) -> tuple[int, Iterator[_Piece]]:
    """The rows from the row group holding the first row wanted on, converted.

    Returns:
        The file's row number of the first piece's first row, and the pieces.
    """
    reader = pq.ParquetFile(path)
    metadata = reader.metadata
    wanted = ranges[0][1]
    group_start = 0
    group = 0
    while group < metadata.num_row_groups - 1:
        rows = metadata.row_group(group).num_rows
        if group_start + rows > wanted:
            break
        group_start += rows
        group += 1
    groups = list(range(group, metadata.num_row_groups))
    skipped = wanted - group_start
    read_rows = _read_rows(metadata, chunk_rows)
    batches: Iterator[pa.RecordBatch] = _batches(reader, groups, read_rows)
    if skipped + chunk_rows <= read_rows // 2:
        batches = _first_chunk_first(reader, groups, skipped + chunk_rows, batches)
    return group_start, _converted(batches, schema, skipped)


def _batches(
    reader: pq.ParquetFile, groups: list[int], rows: int
) -> Generator[pa.RecordBatch, None, None]:
    batches: Generator[pa.RecordBatch, None, None] = reader.iter_batches(
        batch_size=rows,
        row_groups=groups,
        # One thread decoding column after column costs less CPU than a pool
        # of them (measured: 0.32 against 0.45 µs a row for digits); the
        # job's other threads use the cores meanwhile.
        use_threads=False,
    )
    return batches


def _first_chunk_first(
    reader: pq.ParquetFile,
    groups: list[int],
    head_rows: int,
    batches: Iterator[pa.RecordBatch],
) -> Iterator[pa.RecordBatch]:
    """``batches``, the rows up to the end of the first chunk wanted read apart
    first: the model waits for the first chunk, not for a whole read of
    READ_CHUNKS chunks decoded and converted (up to 11 ms of CPU for digits).
    Those rows are decoded twice."""
    first = _batches(reader, groups, head_rows)
    head = next(first, None)
    first.close()
    if head is None:
        return
    yield head
    for index, batch in enumerate(batches):
        if index == 0:
            if batch.num_rows <= head.num_rows:
                continue
            batch = batch.slice(head.num_rows)
        yield batch


def _read_rows(metadata: pq.FileMetaData, chunk_rows: int) -> int:
    """Rows a read decodes: whole chunks, up to READ_BYTES or READ_CHUNKS."""
    decoded = sum(
        metadata.row_group(group).total_byte_size
        for group in range(metadata.num_row_groups)
    )
    row_bytes = max(1, int(decoded) // max(1, int(metadata.num_rows)))
    chunks = READ_BYTES // (row_bytes * chunk_rows)
    return chunk_rows * min(READ_CHUNKS, max(1, chunks))


def _converted(
    batches: Iterator[pa.RecordBatch], schema: InputSchema, skipped: int
) -> Iterator[_Piece]:
    """The batches, converted from the one holding row ``skipped`` on.

    The batches before it are decoded (a row group is read from its start)
    but not converted: no range takes their rows (a worker's block that
    starts half way through the file)."""
    row = 0
    for batch in batches:
        row += batch.num_rows
        piece = None if row <= skipped else TablePiece.converted(batch, schema)
        yield batch if piece is None else piece


def _split(pieces: list[_Piece], rows: int) -> tuple[list[_Piece], list[_Piece]]:
    head: list[_Piece] = []
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


def _jsonl_chunks(
    path: Path, ranges: list[_LocalRange], chunk_rows: int, schema: InputSchema
) -> Iterator[tuple[int, Chunk]]:
    remaining = iter(ranges)
    current = next(remaining, None)
    row = 0
    lines: list[bytes] = []
    chunk_start = 0
    with path.open("rb") as handle:
        for line in handle:
            if current is None:
                return
            text = line.strip()
            if not text:
                continue
            row += 1
            index, start, stop = current
            if row <= start:
                continue
            if not lines:
                chunk_start = row - 1
            lines.append(text)
            if len(lines) == chunk_rows or row == stop:
                yield index, _jsonl_chunk(lines, chunk_start, schema)
                lines = []
            if row == stop:
                current = next(remaining, None)
    if current is not None:
        raise CommandError(
            f"{path}: {row} rows read where {current[2]} or more were counted "
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
