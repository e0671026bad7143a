"""One batch prediction job: plan the shards, write those still missing, record it all.

The input's rows are cut into ``ceil(rows / rows_per_shard)`` output shards; the
count depends only on the input and the settings, so every process of a job
(``--shard i/n``, one Kubernetes completion index each) agrees on it. A shard
whose results file exists is done and skipped, so a job that stopped half way
resumes where it stopped. ``.plan.json`` pins what the output folder holds (model
version, input files, layout): a second job with other settings is refused
instead of mixing its shards in. Each finished shard leaves its counts in
``.shards/``; ``job.json``, the job manifest, sums them.

Chunks flow through a bounded pipeline of four threads: while the model works
on one chunk (the runtimes release the GIL in their native code), a reader
reads the next ones (pyarrow's readers release it too) and builds the model's
arrays from them, the job turns the chunks before into results, and a writer
encodes the Parquet row group before those (pyarrow's writer releases the GIL).
Each stage holds a bounded backlog, so that a long step in one (a Parquet
piece of many chunks read and converted at once, a row group encoded) does not
leave the model waiting: the reader keeps at most ``READ_AHEAD`` chunks and
``READ_AHEAD_BYTES`` of model arrays ready, the model gets at most
``PREDICT_AHEAD`` chunks queued besides the ``concurrency`` it runs, and the writer
holds the row group it writes and the one being gathered. The input is read
once, from the first row this process needs to the last, whatever the number
of shards, and the results land in input order.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from servekit.batch.outcomes import Predictions
from servekit.batch.outputs import RESULTS, ShardWriter, shard_name
from servekit.batch.predictors import Predictor
from servekit.batch.readahead import ReadAhead
from servekit.batch.refs import ShardSlice
from servekit.batch.sources import (
    READ_BYTES,
    READ_CHUNKS,
    Chunk,
    InputFile,
    read_ranges,
)
from servekit.console import CommandError

PLAN_FILE = ".plan.json"
SHARDS_DIR = ".shards"
MANIFEST_FILE = "job.json"
READ_AHEAD = 2 * READ_CHUNKS
"""Chunks read and waiting for the model, at most: two Parquet pieces' worth, so
that the chunks of one wait while the next piece is read and converted."""
READ_AHEAD_BYTES = 2 * READ_BYTES
"""Bytes of model arrays read and waiting for the model, at most (one chunk of a
wide table may wait whatever its size)."""
PREDICT_AHEAD = 8
"""Chunks queued for the model besides those it runs: the model goes on while
the job turns chunks into results or gathers a row group. With one queued, and
two chunks read ahead, the model thread of a 200,000-row ``tabular`` job stood
idle 0.13 to 0.44 s (of 1.5 to 2.1) with no chunk given to it yet; with these
backlogs, never for over a millisecond."""


@dataclass(frozen=True)
class JobSettings:
    """How one process runs its part of a job."""

    output: Path
    output_format: str
    batch_size: int
    """Instances per model call (one chunk)."""
    rows_per_shard: int
    """Rows per output shard: the unit of resuming and of ``--shard`` splitting."""
    shard: ShardSlice
    concurrency: int = 1
    """Chunks predicted at the same time (the ``--target`` concurrency)."""
    mode: str = "in-process"
    target: str | None = None


Progress = Callable[[int, int], None]
"""Called with (rows done, rows to do in this run) as chunks are written."""


@dataclass(frozen=True)
class ShardPlan:
    """The output shards, and the rows each covers."""

    rows: int
    rows_per_shard: int

    @property
    def count(self) -> int:
        """How many shards (at least one, so an empty input still has output)."""
        return max(1, math.ceil(self.rows / self.rows_per_shard))

    def bounds(self, index: int) -> tuple[int, int]:
        """First row and row past the last of shard ``index``."""
        start = index * self.rows_per_shard
        return start, min(self.rows, start + self.rows_per_shard)


def run_job(
    files: list[InputFile],
    predictor: Predictor,
    settings: JobSettings,
    progress: Progress | None = None,
    processes: ShardWriters | None = None,
) -> dict[str, Any]:
    """Write this process's missing shards, then the job manifest; return it.

    With ``processes``, the missing shards are cut into as many consecutive
    blocks as it has workers (each block read once, from its first row), and
    each worker process writes one block with its own loaded copy of the
    version; each shard's file is the same whichever process writes it.

    Raises:
        CommandError: The output folder holds another job, or the job failed.
    """
    started = time.time()
    total = sum(source.rows for source in files)
    plan = ShardPlan(total, settings.rows_per_shard)
    output = settings.output
    (output / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    _check_plan(output, _plan_document(files, predictor, settings, plan))
    todo = missing_shards(plan, settings)
    rows_todo = sum(plan.bounds(index)[1] - plan.bounds(index)[0] for index in todo)
    done_rows = 0
    if progress is not None:
        progress(0, rows_todo)

    def advance(rows: int) -> None:
        nonlocal done_rows
        done_rows += rows
        if progress is not None:
            progress(done_rows, rows_todo)

    blocks = split_blocks(todo, 1 if processes is None else processes.count)
    if processes is not None and len(blocks) > 1:
        processes.write(files, settings, plan, blocks, advance)
    else:
        write_shards(files, predictor, settings, plan, todo, advance)
    manifest = _manifest(
        files, predictor, settings, plan, started, len(todo), rows_todo
    )
    manifest["this_run"]["workers"] = max(1, len(blocks))
    _write_json(output / MANIFEST_FILE, manifest)
    return manifest


class ShardWriters(Protocol):
    """Worker processes that write blocks of output shards (see
    :mod:`servekit.batch.processes`)."""

    @property
    def count(self) -> int:
        """How many workers."""
        ...

    def write(
        self,
        files: list[InputFile],
        settings: JobSettings,
        plan: ShardPlan,
        blocks: list[list[int]],
        advance: Callable[[int], None],
    ) -> None:
        """Write each block in a worker; ``advance`` gets the rows written."""
        ...


def missing_shards(plan: ShardPlan, settings: JobSettings) -> list[int]:
    """This process's shards not yet written (results file and counts)."""
    output = settings.output
    return [
        index
        for index in range(plan.count)
        if settings.shard.owns(index)
        and not (
            (
                output / shard_name(RESULTS, index, plan.count, settings.output_format)
            ).exists()
            and _stats_path(output, index).exists()
        )
    ]


def split_blocks(shards: list[int], count: int) -> list[list[int]]:
    """``shards`` cut into at most ``count`` consecutive non-empty blocks whose
    sizes differ by one at most."""
    parts = min(count, len(shards))
    bounds = [len(shards) * part // parts for part in range(parts + 1)]
    return [shards[bounds[part] : bounds[part + 1]] for part in range(parts)]


def write_shards(
    files: list[InputFile],
    predictor: Predictor,
    settings: JobSettings,
    plan: ShardPlan,
    todo: list[int],
    advance: Callable[[int], None],
) -> None:
    """Write the output shards ``todo`` (ascending), each with its counts;
    ``advance`` gets the rows of each chunk written."""
    output = settings.output
    chunks = _prepared(
        read_ranges(
            files,
            [plan.bounds(index) for index in todo],
            settings.batch_size,
            predictor.schema,
        ),
        predictor,
    )
    with (
        ReadAhead(
            chunks,
            READ_AHEAD,
            name="batch-read",
            budget=READ_AHEAD_BYTES,
            size=_held_bytes,
        ) as ahead,
        ThreadPoolExecutor(
            max_workers=settings.concurrency, thread_name_prefix="predict"
        ) as pool,
    ):
        answered = _predicted(iter(ahead), predictor, pool, settings)
        upcoming = next(answered, None)
        for position, index in enumerate(todo):
            shard_started = time.perf_counter()
            writer = ShardWriter(output, index, plan.count, settings.output_format)
            try:
                while upcoming is not None and upcoming[0] == position:
                    _, chunk, outcomes = upcoming
                    writer.write(chunk, outcomes)
                    advance(len(chunk))
                    upcoming = next(answered, None)
                writer.commit()
            except BaseException:
                writer.abort()
                raise
            _write_json(
                _stats_path(output, index),
                {
                    "shard": index,
                    "rows": writer.succeeded + writer.failed,
                    "succeeded": writer.succeeded,
                    "failed": writer.failed,
                    "seconds": round(time.perf_counter() - shard_started, 3),
                    "version": predictor.model.version,
                    "results": writer.results_path.name,
                },
            )


def _prepared(
    chunks: Iterator[tuple[int, Chunk]], predictor: Predictor
) -> Iterator[tuple[int, Chunk]]:
    """The chunks, each prepared for its model call where it was read."""
    for position, chunk in chunks:
        predictor.prepare_chunk(chunk)
        yield position, chunk


def _held_bytes(item: tuple[int, Chunk]) -> int:
    """What a chunk read ahead holds of its own: its request body, its model
    arrays (its columns are views of the piece it was cut from), or its lines."""
    chunk = item[1]
    if chunk.body is not None:
        return len(chunk.body)
    if chunk.inputs is not None:
        return sum(getattr(array, "nbytes", 0) for array in chunk.inputs.values())
    return sum(map(len, chunk.lines or ()))


def _predicted(
    chunks: Iterator[tuple[int, Chunk]],
    predictor: Predictor,
    pool: ThreadPoolExecutor,
    settings: JobSettings,
) -> Iterator[tuple[int, Chunk, Predictions]]:
    """Chunks (with their shard's place) and outcomes, in input order,
    ``concurrency`` in flight."""
    window: deque[tuple[int, Chunk, Future[Predictions]]] = deque()
    for position, chunk in chunks:
        window.append((position, chunk, pool.submit(predictor.predict_chunk, chunk)))
        if len(window) > settings.concurrency + PREDICT_AHEAD:
            done, chunk_done, future = window.popleft()
            yield done, chunk_done, future.result()
    while window:
        done, chunk_done, future = window.popleft()
        yield done, chunk_done, future.result()


def _plan_document(
    files: list[InputFile],
    predictor: Predictor,
    settings: JobSettings,
    plan: ShardPlan,
) -> dict[str, Any]:
    return {
        "model": predictor.model.name,
        "version": predictor.model.version,
        "signature_name": predictor.model.signature_name,
        "inputs": [
            {
                "path": str(source.path.resolve()),
                "format": source.format,
                "rows": source.rows,
                "bytes": source.path.stat().st_size,
            }
            for source in files
        ],
        "rows": plan.rows,
        "rows_per_shard": plan.rows_per_shard,
        "shards": plan.count,
        "output_format": settings.output_format,
    }


def _check_plan(output: Path, document: dict[str, Any]) -> None:
    path = output / PLAN_FILE
    if path.exists():
        try:
            existing = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CommandError(f"{path}: unreadable job plan: {exc}") from exc
        if existing != document:
            changed = sorted(
                key
                for key in set(existing) | set(document)
                if existing.get(key) != document.get(key)
            )
            raise CommandError(
                f"{output} holds the output of another job (it differs in "
                f"{', '.join(changed)}); choose a new --output folder, or remove "
                "this one to start over"
            )
        return
    _write_json(path, document)


def _stats_path(output: Path, index: int) -> Path:
    return output / SHARDS_DIR / f"{index:05d}.json"


def _manifest(
    files: list[InputFile],
    predictor: Predictor,
    settings: JobSettings,
    plan: ShardPlan,
    started: float,
    shards_written: int,
    rows_written: int,
) -> dict[str, Any]:
    shards: list[dict[str, Any]] = []
    for index in range(plan.count):
        path = _stats_path(settings.output, index)
        if path.exists():
            shards.append(json.loads(path.read_text(encoding="utf-8")))
    finished = time.time()
    seconds = finished - started
    rows_done = sum(int(shard["rows"]) for shard in shards)
    return {
        "model": {
            "name": predictor.model.name,
            "version": predictor.model.version,
            "signature_name": predictor.model.signature_name,
            "sha256": predictor.model.sha256,
            "identity": predictor.model.identity,
        },
        "mode": settings.mode,
        "target": settings.target,
        "inputs": [
            {"path": str(source.path), "format": source.format, "rows": source.rows}
            for source in files
        ],
        "output_format": settings.output_format,
        "batch_size": settings.batch_size,
        "shards": {
            "count": plan.count,
            "done": len(shards),
            "rows_per_shard": plan.rows_per_shard,
        },
        "completion_stats": {
            "successful_count": sum(int(shard["succeeded"]) for shard in shards),
            "failed_count": sum(int(shard["failed"]) for shard in shards),
            "incomplete_count": plan.rows - rows_done,
        },
        "complete": len(shards) == plan.count,
        "this_run": {
            "process": asdict(settings.shard),
            "shards_written": shards_written,
            "rows": rows_written,
            "started": _timestamp(started),
            "finished": _timestamp(finished),
            "seconds": round(seconds, 3),
            "rows_per_second": round(rows_written / seconds, 1) if seconds else None,
        },
    }


def _timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _write_json(path: Path, document: dict[str, Any]) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)
