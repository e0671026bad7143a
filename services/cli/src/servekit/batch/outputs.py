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

import csv
import io
import os
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from servekit_protocol import json_codec

from servekit.batch.predictors import Encoded, Outcome, RowError
from servekit.batch.sources import CSV, JSONL, PARQUET, Chunk

RESULTS = "prediction.results"
ERRORS = "prediction.errors"
FORMATS = (JSONL, CSV, PARQUET)
_SUFFIX = {JSONL: "", CSV: ".csv", PARQUET: ".parquet"}
PREDICTION = "prediction"
INSTANCE = "instance"


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
        self._csv: Any = None
        self._csv_columns: list[str] = []
        self._parquet: pq.ParquetWriter | None = None
        self.succeeded = 0
        self.failed = 0
        if fmt != PARQUET:
            self._results_file = self._results_tmp.open("wb")

    @property
    def results_path(self) -> Path:
        """Where the results land once committed."""
        return self._results

    def write(self, chunk: Chunk, outcomes: dict[int, Outcome]) -> None:
        """Append a chunk's rows: ``outcomes`` by offset for the rows that were read."""
        offsets: list[int] = []
        predictions: list[Any] = []
        error_lines: list[bytes] = []
        for offset in range(len(chunk)):
            error = chunk.read_errors.get(offset)
            outcome = (
                RowError("INVALID_ARGUMENT", error)
                if error is not None
                else outcomes[offset]
            )
            if isinstance(outcome, RowError):
                error_lines.append(
                    orjson.dumps(
                        {
                            INSTANCE: chunk.instance(offset),
                            "error": {
                                "status": outcome.status,
                                "message": outcome.message,
                            },
                        }
                    )
                )
            else:
                offsets.append(offset)
                predictions.append(outcome)
        if error_lines:
            self._errors_file.write(b"\n".join(error_lines) + b"\n")
        self.failed += len(error_lines)
        self.succeeded += len(offsets)
        if not offsets:
            return
        if self._format == JSONL:
            assert self._results_file is not None
            # The bytes orjson writes for {"instance": ..., "prediction": ...}.
            self._results_file.write(
                b"\n".join(
                    b'{"instance":%b,"prediction":%b}' % (instance, _text(prediction))
                    for instance, prediction in zip(
                        chunk.instance_texts(offsets), predictions, strict=True
                    )
                )
                + b"\n"
            )
            return
        rows = [
            _table_row(chunk.instance_value(offset), _value(prediction))
            for offset, prediction in zip(offsets, predictions, strict=True)
        ]
        if self._format == CSV:
            self._write_csv(rows)
        else:
            self._write_parquet(rows)

    def _write_csv(self, rows: list[dict[str, Any]]) -> None:
        assert self._results_file is not None
        text = io.StringIO()
        if self._csv is None:
            self._csv_columns = list(rows[0])
            self._csv = True
            csv.writer(text).writerow(self._csv_columns)
        writer = csv.writer(text)
        for row in rows:
            writer.writerow(_csv_cell(row.get(column)) for column in self._csv_columns)
        self._results_file.write(text.getvalue().encode("utf-8"))

    def _write_parquet(self, rows: list[dict[str, Any]]) -> None:
        if self._parquet is None:
            table = pa.Table.from_pylist(rows)
            self._parquet = pq.ParquetWriter(self._results_tmp, table.schema)
        else:
            table = pa.Table.from_pylist(rows, schema=self._parquet.schema)
        self._parquet.write_table(table)

    def commit(self) -> None:
        """Flush both files to disk and rename them into place, results last."""
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


def _text(prediction: Any) -> bytes:
    if isinstance(prediction, Encoded):
        return prediction.text
    return orjson.dumps(prediction)


def _value(prediction: Any) -> Any:
    if isinstance(prediction, Encoded):
        return json_codec.loads(prediction.text)
    return prediction


def _table_row(instance: Any, prediction: Any) -> dict[str, Any]:
    row: dict[str, Any] = (
        dict(instance) if isinstance(instance, dict) else {INSTANCE: instance}
    )
    if isinstance(prediction, dict):
        for name, value in prediction.items():
            row[f"{PREDICTION}_{name}"] = value
    else:
        row[PREDICTION] = prediction
    return row


def _csv_cell(value: Any) -> Any:
    if isinstance(value, list | dict):
        return orjson.dumps(value).decode()
    return value


def _sync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
