"""Output shards in Vertex AI's shape, written so a reader never sees half of one.

Shard ``k`` of ``m`` is ``prediction.results-kkkkk-of-mmmmm`` (JSON Lines
``{"instance": ..., "prediction": ...}``, or ``.csv`` / ``.parquet`` with the
instance's columns and the prediction columns) and
``prediction.errors-kkkkk-of-mmmmm`` (JSON Lines ``{"instance": ...,
"error": {"status": ..., "message": ...}}``). Both are written under hidden
names and renamed into place after their data is on disk, the results file
last: its presence is what marks the shard done for a resumed job.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from servekit.batch.answers import prediction_texts
from servekit.batch.outcomes import Encoded, Outcome, Predictions, RowError
from servekit.batch.sources import CSV, JSONL, PARQUET, Chunk
from servekit.batch.tables import (
    INSTANCE,
    PREDICTION,
    csv_header,
    csv_rows,
    results_table,
)

RESULTS = "prediction.results"
ERRORS = "prediction.errors"
FORMATS = (JSONL, CSV, PARQUET)
_SUFFIX = {JSONL: "", CSV: ".csv", PARQUET: ".parquet"}
ROW_GROUP_ROWS = 65_536
"""Rows of Parquet results held back to be written as one row group, at most."""
ROW_GROUP_BYTES = 32 << 20
"""Bytes of Parquet results held back, at most (a wide table's rows are large)."""
DISTINCT_SAMPLE = 1_024
"""Values of a float input column whose repeats decide its dictionary encoding."""
DISTINCT_SAMPLE_MIN = 256
"""Fewer values than this (a small shard) leave the encoding to pyarrow."""


def shard_name(prefix: str, index: int, count: int, fmt: str = JSONL) -> str:
    """``prefix-NNNNN-of-MMMMM`` (plus ``.csv``/``.parquet`` for those results)."""
    suffix = _SUFFIX[fmt] if prefix == RESULTS else ""
    return f"{prefix}-{index:05d}-of-{count:05d}{suffix}"


class ShardWriter:
    """Writes one output shard, chunk by chunk, then commits it atomically."""

    def __init__(self, directory: Path, index: int, count: int, fmt: str) -> None:
        self._format = fmt
        self._results = directory / shard_name(RESULTS, index, count, fmt)
        self._errors = directory / shard_name(ERRORS, index, count)
        self._results_tmp = directory / f".{self._results.name}.{os.getpid()}.tmp"
        self._errors_tmp = directory / f".{self._errors.name}.{os.getpid()}.tmp"
        self._errors_file: BinaryIO = self._errors_tmp.open("wb")
        self._results_file: BinaryIO | None = None
        self._csv_columns: list[str] = []
        self._parquet: pq.ParquetWriter | None = None
        self._pending: list[pa.Table] = []
        self._behind: ThreadPoolExecutor | None = None
        self._writing: Future[None] | None = None
        self._pending_rows = 0
        self._pending_bytes = 0
        self._row_bytes = 0
        self.succeeded = 0
        self.failed = 0
        if fmt != PARQUET:
            self._results_file = self._results_tmp.open("wb")

    @property
    def results_path(self) -> Path:
        """Where the results land once committed."""
        return self._results

    def write(self, chunk: Chunk, predictions: Predictions) -> None:
        """Append a chunk's rows: their read errors, then ``predictions``."""
        self._write_errors(chunk, predictions)
        bulk = predictions.bulk
        outputs: dict[str, Any] | None = None
        answers: list[Outcome] | None = None
        if bulk is not None and not predictions.successes():
            offsets = bulk.offsets
            outputs = bulk.outputs
        else:
            answered = predictions.outcomes
            if bulk is not None:
                texts = prediction_texts(bulk.outputs, len(bulk.offsets))
                answered = {
                    **answered,
                    **{
                        offset: Encoded(text)
                        for offset, text in zip(
                            bulk.offsets.tolist(), texts, strict=True
                        )
                    },
                }
            kept = sorted(
                offset
                for offset, outcome in answered.items()
                if not isinstance(outcome, RowError) and offset not in chunk.read_errors
            )
            offsets = np.asarray(kept, dtype=np.intp)
            answers = [answered[offset] for offset in kept]
        self.succeeded += len(offsets)
        if not len(offsets):
            return
        if self._format == JSONL:
            lines = (
                prediction_texts(outputs, len(offsets))
                if outputs is not None
                else [_text(answer) for answer in answers or ()]
            )
            self._write_jsonl(chunk.instance_texts(offsets.tolist()), lines)
            return
        table = results_table(chunk, offsets, outputs, answers)
        if self._format == CSV:
            self._write_csv(table)
        else:
            self._write_parquet(table)

    def _write_errors(self, chunk: Chunk, predictions: Predictions) -> None:
        failed: dict[int, str | RowError] = dict(chunk.read_errors)
        for offset, outcome in predictions.outcomes.items():
            if isinstance(outcome, RowError) and offset not in failed:
                failed[offset] = outcome
        if not failed:
            return
        lines = []
        for offset in sorted(failed):
            outcome = failed[offset]
            error = (
                outcome
                if isinstance(outcome, RowError)
                else RowError("INVALID_ARGUMENT", outcome)
            )
            lines.append(
                orjson.dumps(
                    {
                        INSTANCE: chunk.instance(offset),
                        "error": {"status": error.status, "message": error.message},
                    }
                )
            )
        self._errors_file.write(b"\n".join(lines) + b"\n")
        self.failed += len(lines)

    def _write_jsonl(self, instances: list[bytes], predictions: list[bytes]) -> None:
        assert self._results_file is not None
        # The bytes orjson writes for {"instance": ..., "prediction": ...}, one
        # line a row, put together by slice assignment rather than a row loop.
        parts = [b'{"instance":', b"", b',"prediction":', b"", b"}\n"] * len(instances)
        parts[1::5] = instances
        parts[3::5] = predictions
        self._results_file.write(b"".join(parts))

    def _write_csv(self, table: pa.Table) -> None:
        assert self._results_file is not None
        if not self._csv_columns:
            self._csv_columns = table.column_names
            self._results_file.write(csv_header(self._csv_columns))
        elif table.column_names != self._csv_columns:
            table = _aligned(table, self._csv_columns)
        self._results_file.write(csv_rows(table))

    def _write_parquet(self, table: pa.Table) -> None:
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(
                self._results_tmp,
                table.schema,
                use_dictionary=dictionary_columns(table),
            )
        elif table.schema != self._parquet.schema:
            schema = self._parquet.schema
            table = _aligned(table, schema.names).cast(schema)
        # Each write is a row group: a chunk's 1,024 rows a group made every
        # column's page headers, statistics and dictionary a large share of
        # the writing (and of the file), so chunks are held back into groups.
        if not self._row_bytes:
            # Measured on the first chunk only: nbytes walks every buffer of a
            # sliced table (about 150 µs for digits' 66 columns), and a shard's
            # rows are alike.
            self._row_bytes = max(1, table.nbytes // max(1, table.num_rows))
        self._pending.append(table)
        self._pending_rows += table.num_rows
        self._pending_bytes += table.num_rows * self._row_bytes
        if (
            self._pending_rows >= ROW_GROUP_ROWS
            or self._pending_bytes >= ROW_GROUP_BYTES
        ):
            self._flush_parquet()

    def _flush_parquet(self) -> None:
        if self._parquet is not None and self._pending:
            group = pa.concat_tables(self._pending)
            # Written behind: the encoding (which releases the GIL) runs in a
            # thread of its own while the next chunks are predicted; one row
            # group at a time, so at most two are held (this one and the one
            # being gathered) and they land in order.
            self._wait_written()
            if self._behind is None:
                self._behind = ThreadPoolExecutor(1, thread_name_prefix="write")
            self._writing = self._behind.submit(self._parquet.write_table, group)
        self._pending = []
        self._pending_rows = self._pending_bytes = 0

    def _wait_written(self) -> None:
        """Wait for the row group being written; raise what writing it raised."""
        writing, self._writing = self._writing, None
        if writing is not None:
            writing.result()

    def commit(self) -> None:
        """Flush both files to disk and rename them into place, results last."""
        self._flush_parquet()
        self._wait_written()
        if self._parquet is None and self._format == PARQUET:
            # No row succeeded: an empty file with no columns still marks it done.
            pq.write_table(pa.table({}), self._results_tmp)
        self._close(sync=True)
        os.replace(self._errors_tmp, self._errors)
        os.replace(self._results_tmp, self._results)
        _sync_directory(self._results.parent)

    def abort(self) -> None:
        """Drop what was written (the shard is left to a later run)."""
        self._close(sync=False)
        self._errors_tmp.unlink(missing_ok=True)
        self._results_tmp.unlink(missing_ok=True)

    def _close(self, *, sync: bool) -> None:
        if self._behind is not None:
            # Aborting: the row group in flight is dropped with the file, but
            # the writer is not closed under the thread still writing it.
            self._behind.shutdown(wait=True)
            self._behind = None
            self._writing = None
        for handle in (self._errors_file, self._results_file):
            if handle is not None and not handle.closed:
                if sync:
                    handle.flush()
                    os.fsync(handle.fileno())
                handle.close()
        if self._parquet is not None:
            self._parquet.close()
            self._parquet = None
            if sync:
                with self._results_tmp.open("rb") as handle:
                    os.fsync(handle.fileno())


def dictionary_columns(table: pa.Table) -> list[str]:
    """The columns written with dictionary encoding, judged on a shard's first
    rows: all but float predictions and float inputs with no value twice.

    A model's scores are nearly all distinct, so a dictionary of them fills
    its page and falls back to plain encoding: the hashing is spent for
    nothing, and the file is larger (``digits``: 114 against 110 bytes a row,
    and 1.28 against 0.98 µs a row to write, pyarrow 26). An input's float
    column is the same when its values are continuous: there a dictionary of
    a row group's 65,536 values stays under its page limit, so it is kept,
    and costs about ten times plain encoding's CPU for a larger file (64
    random ``float32`` columns: 3.96 against 0.39 µs a row, 382 against 256
    bytes). A column of few values (``digits``' pixels, 17 of them) gains from
    it, in time and size (0.73 against 0.86 µs, 41 against 118 bytes). Among
    1,024 rows, a value comes back unless the column holds far more distinct
    values than a row group has rows (the birthday bound); rows where none
    does are taken for a continuous column. Other columns keep the encoding
    pyarrow chooses by default.
    """
    return [
        field.name
        for field, column in zip(table.schema, table.columns, strict=True)
        if not (
            _is_float(field.type)
            and (
                field.name == PREDICTION
                or field.name.startswith(PREDICTION + "_")
                or _all_distinct(column)
            )
        )
    ]


def _all_distinct(column: pa.ChunkedArray) -> bool:
    """Whether no value comes twice among the first ``DISTINCT_SAMPLE`` of
    ``column`` (of its lists), given enough of them to judge."""
    values: pa.ChunkedArray = column
    while pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
        values = pc.list_flatten(values)
    if len(values) < DISTINCT_SAMPLE_MIN:
        return False
    sample = values.slice(0, DISTINCT_SAMPLE)
    distinct: int = pc.count_distinct(sample, mode="all").as_py()
    return distinct == len(sample)


def _is_float(kind: pa.DataType) -> bool:
    while pa.types.is_list(kind) or pa.types.is_large_list(kind):
        kind = kind.value_type
    return bool(pa.types.is_floating(kind))


def _text(prediction: Any) -> bytes:
    if isinstance(prediction, Encoded):
        return prediction.text
    return orjson.dumps(prediction)


def _aligned(table: pa.Table, names: list[str]) -> pa.Table:
    """``table`` with the columns ``names`` (the shard's first chunk's), in order.

    A column the chunk lacks is all nulls; one the shard's first chunk lacked
    is dropped, so every row of a file has the same columns.
    """
    rows = table.num_rows
    return pa.table(
        {
            name: table.column(name) if name in table.column_names else pa.nulls(rows)
            for name in names
        }
    )


def _sync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
