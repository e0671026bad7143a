"""Reading a job's input once for all its shards, and reading ahead of the model."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from servekit.batch.chunks import Chunk
from servekit.batch.readahead import ReadAhead
from servekit.batch.schema import FLOAT, InputSchema
from servekit.batch.sources import (
    READ_CHUNKS,
    InputFile,
    discover,
    read_chunks,
    read_ranges,
)
from servekit.console import CommandError

SCHEMA = InputSchema("serving_default", {"a": FLOAT, "b": FLOAT})
ROWS = 23


def rows_of(chunk: Chunk) -> list[Any]:
    return [chunk.instance_value(offset) for offset in range(len(chunk))]


def value(row: int) -> dict[str, float]:
    return {"a": float(row), "b": row * 0.5}


@pytest.fixture(params=["csv", "jsonl", "parquet"])
def inputs(request: pytest.FixtureRequest, tmp_path: Path) -> list[InputFile]:
    """Two files of one format holding rows 0-22 (the first 10, then 13)."""
    fmt = request.param
    for name, rows in (("a", range(10)), ("b", range(10, ROWS))):
        path = tmp_path / f"{name}.{fmt}"
        if fmt == "csv":
            path.write_text("a,b\n" + "".join(f"{r}.0,{r * 0.5}\n" for r in rows))
        elif fmt == "jsonl":
            path.write_text("".join(json.dumps(value(r)) + "\n" for r in rows))
        else:
            table = pa.table(
                {"a": [float(r) for r in rows], "b": [r * 0.5 for r in rows]}
            )
            # Row groups of 4 rows: a shard starting mid-file starts mid-group.
            pq.write_table(table, path, row_group_size=4)
    return discover(tmp_path)


@pytest.mark.parametrize(
    "ranges",
    [
        [(0, 6), (6, 12), (12, 18), (18, 23)],  # every shard, in order
        [(3, 9), (15, 21)],  # --shard 1/2 of shards of six rows
        [(9, 10), (10, 11), (22, 23)],  # one-row shards, at a file's edges
    ],
)
def test_one_pass_gives_each_range_the_chunks_a_read_of_it_alone_gives(
    inputs: list[InputFile], ranges: list[tuple[int, int]]
) -> None:
    together = list(read_ranges(inputs, ranges, 4, SCHEMA))
    assert [index for index, _ in together] == sorted(index for index, _ in together)
    for index, (start, stop) in enumerate(ranges):
        alone = list(read_chunks(inputs, start, stop, 4, SCHEMA))
        mine = [chunk for position, chunk in together if position == index]
        assert [(c.start, len(c)) for c in mine] == [(c.start, len(c)) for c in alone]
        assert [rows_of(chunk) for chunk in mine] == [rows_of(chunk) for chunk in alone]
        assert [row for chunk in mine for row in rows_of(chunk)] == [
            value(row) for row in range(start, stop)
        ]


def test_a_parquet_file_is_read_from_the_row_group_of_the_first_row_wanted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"a": [float(r) for r in range(40)]}), path, 10)
    asked: list[list[int]] = []
    iter_batches = pq.ParquetFile.iter_batches

    def recording(self: pq.ParquetFile, **options: Any) -> Iterator[pa.RecordBatch]:
        asked.append(list(options["row_groups"]))
        return iter_batches(self, **options)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", recording)
    schema = InputSchema("serving_default", {"a": FLOAT})
    chunks = list(read_chunks(discover(path), 25, 32, 4, schema))
    assert asked and all(groups == [2, 3] for groups in asked)
    assert [row["a"] for c in chunks for row in rows_of(c)] == list(range(25, 32))


def test_parquet_chunks_across_the_reads_of_many_chunks_are_the_files_rows(
    tmp_path: Path,
) -> None:
    """A Parquet file is read many chunks at a time (READ_CHUNKS); a chunk that
    starts in one read and ends in the next holds the rows of both, in order."""
    path = tmp_path / "in.parquet"
    rows = 7 * READ_CHUNKS + 11
    a = [None if row % 13 == 0 else row * 0.5 for row in range(rows)]
    pq.write_table(
        pa.table({"a": pa.array(a, pa.float64()), "n": list(range(rows))}),
        path,
        row_group_size=50,
    )
    schema = InputSchema("serving_default", {"a": FLOAT})
    ranges = [(1, 3 * READ_CHUNKS + 5), (3 * READ_CHUNKS + 5, rows - 2)]
    chunks = list(read_ranges(discover(path), ranges, 3, schema))
    assert {len(chunk) for _, chunk in chunks} <= {1, 2, 3}
    for index, (start, stop) in enumerate(ranges):
        mine = [chunk for position, chunk in chunks if position == index]
        assert [c.start for c in mine] == list(range(start, stop, 3))
        got = [row for chunk in mine for row in rows_of(chunk)]
        assert [row["n"] for row in got] == list(range(start, stop))
        for row in got:
            expected = a[row["n"]]
            assert row["a"] == expected or (expected is None and math.isnan(row["a"]))
        # The columns as read, which Parquet results take, are the same rows.
        read = [
            chunk.table.source_rows(np.arange(len(chunk))).column("n").to_pylist()
            for chunk in mine
            if chunk.table is not None
        ]
        assert [n for part in read for n in part] == list(range(start, stop))


def test_a_file_shorter_than_counted_stops_the_job(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(value(r)) + "\n" for r in range(5)))
    files = [InputFile(path, "jsonl", 8)]
    with pytest.raises(CommandError, match="5 rows read where 8"):
        list(read_ranges(files, [(0, 4), (4, 8)], 3, SCHEMA))


def test_read_ahead_keeps_the_order_and_at_most_depth_items_waiting() -> None:
    produced = 0
    most_ahead = 0
    taken = 0
    lock = threading.Lock()

    def numbers() -> Iterator[int]:
        nonlocal produced, most_ahead
        for number in range(200):
            with lock:
                produced += 1
                most_ahead = max(most_ahead, produced - taken)
            yield number

    seen = []
    with ReadAhead(numbers(), 3, name="test-read") as ahead:
        for number in ahead:
            with lock:
                taken += 1
            seen.append(number)
    assert seen == list(range(200))
    # Besides the queue's 3: the item the reader holds while the queue is full,
    # and the one the loop has taken from the queue but not yet counted.
    assert most_ahead <= 3 + 2


def test_read_ahead_raises_the_readers_error_in_its_place() -> None:
    def failing() -> Iterator[int]:
        yield 1
        yield 2
        raise CommandError("in.csv: cannot read")

    seen = []
    with (
        pytest.raises(CommandError, match="cannot read"),
        ReadAhead(failing(), 1, name="test-read") as ahead,
    ):
        for number in ahead:
            seen.append(number)
    assert seen == [1, 2]


def test_leaving_early_stops_the_reader_and_closes_the_source() -> None:
    closed = threading.Event()

    def endless() -> Iterator[int]:
        try:
            number = 0
            while True:
                yield number
                number += 1
        finally:
            closed.set()

    with ReadAhead(endless(), 2, name="test-read") as ahead:
        for number in ahead:
            if number == 5:
                break
    assert closed.is_set()
    assert not any(t.name == "test-read" for t in threading.enumerate())


def test_read_ahead_with_a_budget_holds_at_most_its_bytes_in_order() -> None:
    produced = 0
    most_held = 0
    taken = 0
    lock = threading.Lock()
    sizes = [300, 100, 100, 500, 50, 50, 50, 700, 10] * 20

    def blocks() -> Iterator[int]:
        nonlocal produced, most_held
        for size in sizes:
            with lock:
                produced += 1
                most_held = max(most_held, sum(sizes[taken:produced]))
            yield size

    seen = []
    with ReadAhead(blocks(), 50, name="test-read", budget=400, size=int) as ahead:
        for size in ahead:
            seen.append(size)
            with lock:
                taken += 1
    assert seen == sizes
    # Waiting: at most 400 bytes, or one item over the budget alone; besides
    # them, the item the reader holds and the one the loop took, uncounted.
    assert most_held <= 400 + 700 + 700


def test_read_ahead_lets_one_item_over_the_budget_through() -> None:
    with ReadAhead(
        iter([10, 5_000, 20]), 4, name="test-read", budget=100, size=int
    ) as ahead:
        assert list(ahead) == [10, 5_000, 20]


def test_read_ahead_refuses_a_budget_without_sizes() -> None:
    with pytest.raises(ValueError, match="together"):
        ReadAhead(iter([1]), 2, name="test-read", budget=100)
