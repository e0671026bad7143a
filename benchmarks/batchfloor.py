"""The floor under a Parquet batch job: the same file scored by code with no job logic.

``python -m benchmarks.batchjob`` runs it beside the job, in the same rounds. In
each of ``--workers`` processes (spawned, each with the version loaded by
:class:`~servekit.batch.inprocess.InProcessPredictor` before the clock), one
consecutive block of the input's rows goes, on one thread, through:

- pyarrow's ``iter_batches`` (no threads, as the job reads; as many rows a read
  as the job's reads decode);
- the model's arrays built straight from the columns: a column per input, or
  the ``pixel_<i>`` columns side by side as one matrix input, cast to the
  signature's dtypes (text as ``str`` for scikit-learn, as the job gives it);
- the runtime's ``prepare_predict`` and ``run``, ``--batch-size`` rows a call;
- the batch's columns with the outputs appended as they came out of the model
  (``prediction`` or ``prediction_<output>``; no read-back through the answer's
  text, no per-row checks, no error file);
- a ``ParquetWriter`` with the job's row groups (65,536 rows or 32 MiB) and the
  job's dictionary choice (:func:`servekit.batch.outputs.dictionary_columns`).

The processes start together (a barrier with the parent); a round's time runs
from the barrier to the last process's end, and its CPU time is the processes'
own (``time.process_time`` around the work).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

READY_SECONDS = 600.0
"""How long a process may take to load the version (a spawned process imports
TensorFlow anew: tens of seconds on a busy two-core machine)."""
ROUND_SECONDS = 1800.0
"""How long a round may take before the floor gives up on a process."""


@dataclass(frozen=True)
class FloorRound:
    """One round of the floor: wall seconds from the barrier, CPU seconds of all
    the processes, and the files they wrote."""

    seconds: float
    cpu_seconds: float
    files: list[Path]


class FloorProcesses:
    """``count`` spawned processes with the version loaded, writing the floor's
    blocks (a context manager: entering starts them and waits until each has
    loaded it)."""

    def __init__(
        self,
        registry: Path,
        name: str,
        version: int,
        count: int,
        *,
        session_threads: int = 0,
    ) -> None:
        # Spawned whatever the parent has loaded: a forked TensorFlow hangs.
        self._context = multiprocessing.get_context("spawn")
        self._arguments = (registry, name, version, session_threads)
        self._count = count
        self._barrier: Any = self._context.Barrier(count + 1)
        self._results: Any = self._context.Queue()
        self._processes: list[tuple[BaseProcess, Connection]] = []

    def __enter__(self) -> FloorProcesses:
        try:
            for number in range(self._count):
                reader, writer = self._context.Pipe(duplex=False)
                process = self._context.Process(
                    target=_serve,
                    args=(number, *self._arguments, reader, self._barrier,
                          self._results),
                    name=f"batch-floor-{number}",
                    daemon=True,
                )  # fmt: skip
                process.start()
                reader.close()
                self._processes.append((process, writer))
            for _ in range(self._count):
                _expect(self._results.get(timeout=READY_SECONDS), "ready")
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stop()

    def run(self, path: Path, folder: Path, rows: int, batch_size: int) -> FloorRound:
        """Score ``rows`` rows of ``path`` into ``folder``, a consecutive block in
        each process, all started together."""
        folder.mkdir(parents=True, exist_ok=True)
        files = [folder / f"floor-{k}.parquet" for k in range(self._count)]
        for number, (_, tasks) in enumerate(self._processes):
            first = number * rows // self._count
            last = (number + 1) * rows // self._count
            tasks.send((path, files[number], first, last, batch_size))
        self._barrier.wait(timeout=READY_SECONDS)
        started = time.perf_counter()
        cpu = 0.0
        for _ in range(self._count):
            cpu += _expect(self._results.get(timeout=ROUND_SECONDS), "done")
        return FloorRound(time.perf_counter() - started, cpu, files)

    def _stop(self) -> None:
        for process, tasks in self._processes:
            with contextlib.suppress(OSError):  # it has ended already
                tasks.send(None)
            tasks.close()
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join()
        self._processes = []


def _expect(message: tuple[str, Any], wanted: str) -> Any:
    kind, detail = message
    if kind != wanted:
        raise RuntimeError(f"batch floor process: {detail}")
    return detail


def _serve(
    number: int,
    registry: Path,
    name: str,
    version: int,
    session_threads: int,
    tasks: Connection,
    barrier: Any,
    results: Any,
) -> None:
    """A floor process: load the version, then write each block it is sent."""
    from servekit.batch.inprocess import InProcessPredictor

    try:
        predictor = InProcessPredictor(
            registry, name, version, "", session_threads=session_threads
        )
    except Exception as exc:
        results.put(("failed", f"{number}: {exc}"))
        return
    results.put(("ready", None))
    try:
        while (task := tasks.recv()) is not None:
            path, output, first, last, batch_size = task
            barrier.wait()
            cpu = time.process_time()
            try:
                write_floor(predictor, path, output, first, last, batch_size)
            except Exception as exc:
                results.put(("failed", f"{number}: {type(exc).__name__}: {exc}"))
                continue
            results.put(("done", time.process_time() - cpu))
    except EOFError:
        return  # the parent closed its end
    finally:
        predictor.close()


def write_floor(
    predictor: Any, path: Path, output: Path, first: int, last: int, batch_size: int
) -> int:
    """Rows ``first`` to ``last`` of the Parquet file ``path``, scored into
    ``output`` with no job logic; returns the rows written."""
    from modelserver.runtimes.sklearn import SklearnRuntime
    from servekit.batch.outputs import (
        ROW_GROUP_BYTES,
        ROW_GROUP_ROWS,
        dictionary_columns,
    )
    from servekit_protocol.tensors import numpy_dtype

    runtime = predictor.runtime
    signature = predictor.model.signature_name
    _, info = runtime.predict_signature(signature)
    dtypes = {alias: numpy_dtype(spec.dtype) for alias, spec in info.inputs.items()}
    text_as_str = isinstance(runtime, SklearnRuntime)
    source = pq.ParquetFile(path)
    writer: pq.ParquetWriter | None = None
    pending: list[pa.Table] = []
    pending_rows = row_bytes = written = seen = 0
    for batch in source.iter_batches(
        batch_size=read_rows(source.metadata, batch_size), use_threads=False
    ):
        start, seen = seen, seen + batch.num_rows
        if seen <= first:
            continue  # decoded, as a row group is read from its start
        if start >= last:
            break
        lo = max(first, start)
        batch = batch.slice(lo - start, min(last, seen) - lo)
        arrays = model_arrays(batch, dtypes, text_as_str=text_as_str)
        for offset in range(0, batch.num_rows, batch_size):
            call = runtime.prepare_predict(
                signature,
                {
                    key: value[offset : offset + batch_size]
                    for key, value in arrays.items()
                },
                (),
            )
            outputs = dict(runtime.run(call))
            table = pa.Table.from_batches([batch.slice(offset, batch_size)])
            for title, column in output_columns(outputs).items():
                table = table.append_column(title, column)
            if writer is None:
                writer = pq.ParquetWriter(
                    output, table.schema, use_dictionary=dictionary_columns(table)
                )
                row_bytes = max(1, table.nbytes // max(1, table.num_rows))
            pending.append(table)
            pending_rows += table.num_rows
            if (
                pending_rows >= ROW_GROUP_ROWS
                or pending_rows * row_bytes >= ROW_GROUP_BYTES
            ):
                writer.write_table(pa.concat_tables(pending))
                written += pending_rows
                pending, pending_rows = [], 0
    if writer is not None:
        if pending:
            writer.write_table(pa.concat_tables(pending))
            written += pending_rows
        writer.close()
    return written


def read_rows(metadata: pq.FileMetaData, batch_size: int) -> int:
    """Rows a read decodes, as the job's reads (whole chunks, up to 8 MiB
    decoded or 32 chunks)."""
    from servekit.batch.sources import READ_BYTES, READ_CHUNKS

    decoded = sum(
        metadata.row_group(group).total_byte_size
        for group in range(metadata.num_row_groups)
    )
    row_bytes = max(1, int(decoded) // max(1, int(metadata.num_rows)))
    return batch_size * min(READ_CHUNKS, max(1, READ_BYTES // (row_bytes * batch_size)))


def model_arrays(
    batch: pa.RecordBatch, dtypes: dict[str, np.dtype[Any]], *, text_as_str: bool
) -> dict[str, Any]:
    """The model's arrays from a batch: a column per input named in it, else one
    matrix input of all the batch's columns side by side."""
    names = batch.schema.names
    if all(name in names for name in dtypes):
        arrays = {}
        for name, dtype in dtypes.items():
            column = batch.column(name)
            if dtype.kind == "O":
                if not text_as_str:
                    column = column.cast(pa.binary())
                arrays[name] = column.to_numpy(zero_copy_only=False)
            else:
                arrays[name] = column.to_numpy().astype(dtype)
        return arrays
    ((name, dtype),) = dtypes.items()
    stacked = np.empty((batch.num_columns, batch.num_rows), dtype)
    for index, column in enumerate(batch.columns):
        stacked[index] = column.to_numpy()
    return {name: np.ascontiguousarray(stacked.T)}


def output_columns(outputs: dict[str, Any]) -> dict[str, pa.Array]:
    """The outputs as Arrow columns of their own dtype: ``prediction`` for one
    output, else ``prediction_<output>``; a row of several values a fixed-size
    list."""
    columns = {}
    for name in sorted(outputs):
        array = np.asarray(outputs[name])
        title = "prediction" if len(outputs) == 1 else f"prediction_{name}"
        if array.ndim == 1:
            columns[title] = pa.array(array)
        else:
            width = int(np.prod(array.shape[1:]))
            flat = pa.array(np.ascontiguousarray(array).reshape(-1))
            columns[title] = pa.FixedSizeListArray.from_arrays(flat, width)
    return columns
