"""Parquet results from a Parquet input: its columns as read, row groups, error rows."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from servekit.batch import outputs
from servekit.batch.answers import read_back
from servekit.batch.outcomes import Bulk, Predictions, RowError
from servekit.batch.outputs import ROW_GROUP_ROWS, ShardWriter
from servekit.batch.schema import FLOAT, TEXT, InputSchema
from servekit.batch.sources import discover, read_chunks

SCHEMA = InputSchema("serving_default", {"x": FLOAT, "s": TEXT})
ROWS = 3000
BAD = 1500


def parquet_input(path: Path) -> None:
    x = pa.array([None if row == 7 else row * 0.1 for row in range(ROWS)], pa.float32())
    pq.write_table(
        pa.table(
            {
                "x": x,
                "s": pa.array(
                    [f"t{row % 5}" for row in range(ROWS)], pa.large_string()
                ),
                "id": pa.array(range(ROWS), pa.int32()),
            }
        ),
        path,
    )


def answer_all_but(chunk_rows: int, refused: set[int]) -> list[Predictions]:
    """One Predictions a chunk: every row answered ``row * 2`` except ``refused``."""
    answers = []
    for start in range(0, ROWS, chunk_rows):
        rows = range(start, min(ROWS, start + chunk_rows))
        kept = np.asarray([r - start for r in rows if r not in refused], np.intp)
        answers.append(
            Predictions(
                {
                    r - start: RowError("INVALID_ARGUMENT", f"row {r} refused")
                    for r in rows
                    if r in refused
                },
                Bulk(kept, {"y": (kept + start).astype(np.float64) * 2}),
            )
        )
    return answers


def test_parquet_results_keep_the_inputs_columns_as_read_in_few_row_groups(
    tmp_path: Path,
) -> None:
    source = tmp_path / "in.parquet"
    parquet_input(source)
    chunks = list(read_chunks(discover(source), 0, ROWS, 256, SCHEMA))
    output = tmp_path / "out"
    output.mkdir()
    writer = ShardWriter(output, 0, 1, "parquet")
    for chunk, answer in zip(chunks, answer_all_but(256, {BAD}), strict=True):
        writer.write(chunk, answer)
    writer.commit()
    assert (writer.succeeded, writer.failed) == (ROWS - 1, 1)

    results = pq.ParquetFile(output / "prediction.results-00000-of-00001.parquet")
    # 12 chunks of 256 rows, held back into one row group (not one a chunk).
    assert ROWS < ROW_GROUP_ROWS
    assert results.metadata.num_row_groups == 1
    table = results.read()
    # The input's own types; a null number is NaN, as in the row's instance.
    assert table.schema.field("x").type == pa.float32()
    assert table.schema.field("s").type == pa.large_string()
    assert table.schema.field("id").type == pa.int32()
    assert table.column("x").null_count == 0
    expected = [row for row in range(ROWS) if row != BAD]
    assert table.column("id").to_pylist() == expected
    assert math.isnan(table.column("x")[7].as_py())
    assert table.column("x")[8].as_py() == np.float32(0.8)
    assert table.column("prediction").to_pylist() == [row * 2.0 for row in expected]

    # The refused row, in the middle of its chunk, is an error row with its instance.
    (line,) = (output / "prediction.errors-00000-of-00001").read_text().splitlines()
    error = json.loads(line)
    assert error["error"] == {
        "status": "INVALID_ARGUMENT",
        "message": f"row {BAD} refused",
    }
    assert error["instance"] == {
        "x": float(np.float32(BAD * 0.1)),
        "s": f"t{BAD % 5}",
        "id": BAD,
    }


def test_a_text_input_is_given_as_the_codecs_utf8_bytes(tmp_path: Path) -> None:
    source = tmp_path / "in.parquet"
    pq.write_table(
        pa.table({"x": [1.0, 2.0, 3.0], "s": pa.array(["é", "b", "ü"], pa.string())}),
        source,
    )
    (chunk,) = read_chunks(discover(source), 0, 3, 3, SCHEMA)
    assert chunk.table is not None
    dtypes = {"x": np.dtype(np.float32), "s": np.dtype(object)}
    every = chunk.table.model_inputs(dtypes, np.arange(3))
    some = chunk.table.model_inputs(dtypes, np.asarray([0, 2]))
    assert every is not None and some is not None
    assert every["s"].tolist() == ["é".encode(), b"b", "ü".encode()]
    assert some["s"].tolist() == ["é".encode(), "ü".encode()]
    assert some["x"].tolist() == [1.0, 3.0]


def test_float_predictions_are_written_without_a_dictionary(tmp_path: Path) -> None:
    source = tmp_path / "in.parquet"
    rows = 600
    pq.write_table(
        pa.table(
            {
                "x": [float(row % 4) for row in range(rows)],
                "s": [f"t{row % 3}" for row in range(rows)],
                # An input column named as an output's: the output replaces it.
                "prediction_label": [-1] * rows,
            }
        ),
        source,
    )
    output = tmp_path / "out"
    output.mkdir()
    writer = ShardWriter(output, 0, 1, "parquet")
    for chunk in read_chunks(discover(source), 0, rows, 256, SCHEMA):
        kept = np.arange(len(chunk), dtype=np.intp)
        scores = np.stack([kept * 0.25 + chunk.start, kept * 0.5], axis=1)
        label = (kept + chunk.start) % 7
        writer.write(
            chunk,
            Predictions({}, Bulk(kept, {"scores": scores, "label": label})),
        )
    writer.commit()
    results = pq.ParquetFile(output / "prediction.results-00000-of-00001.parquet")
    table = results.read()
    assert table.column_names == ["x", "s", "prediction_label", "prediction_scores"]
    assert table.column("prediction_scores").to_pylist() == [
        [row - row % 256 + (row % 256) * 0.25, (row % 256) * 0.5] for row in range(rows)
    ]
    assert table.column("prediction_label").to_pylist() == [
        row % 7 for row in range(rows)
    ]
    group = results.metadata.row_group(0)
    encodings = {
        group.column(index).path_in_schema: set(group.column(index).encodings)
        for index in range(group.num_columns)
    }
    dictionary = {"PLAIN_DICTIONARY", "RLE_DICTIONARY"}
    assert encodings["x"] & dictionary and encodings["s"] & dictionary
    assert encodings["prediction_label"] & dictionary
    assert not encodings["prediction_scores.list.element"] & dictionary


def test_continuous_float_inputs_are_written_without_a_dictionary(
    tmp_path: Path,
) -> None:
    source = tmp_path / "in.parquet"
    rows = 3000
    generator = np.random.default_rng(5)
    inputs = pa.table(
        {
            "x": pa.array([float(row % 4) for row in range(rows)], pa.float32()),
            "s": [f"t{row % 3}" for row in range(rows)],
            "c": generator.standard_normal(rows),
            "c32": generator.standard_normal(rows).astype(np.float32),
            "n": generator.integers(0, 2**40, rows),
        }
    )
    pq.write_table(inputs, source)
    output = tmp_path / "out"
    output.mkdir()
    writer = ShardWriter(output, 0, 1, "parquet")
    for chunk in read_chunks(discover(source), 0, rows, 1024, SCHEMA):
        kept = np.arange(len(chunk), dtype=np.intp)
        writer.write(chunk, Predictions({}, Bulk(kept, {"y": kept * 0.5})))
    writer.commit()
    results = pq.ParquetFile(output / "prediction.results-00000-of-00001.parquet")
    table = results.read()
    # The values, types and order of the input's columns, as read.
    assert table.select(inputs.column_names).equals(inputs)
    group = results.metadata.row_group(0)
    dictionary = {
        group.column(index).path_in_schema
        for index in range(group.num_columns)
        if {"PLAIN_DICTIONARY", "RLE_DICTIONARY"} & set(group.column(index).encodings)
    }
    # Repeating floats, text and integers keep pyarrow's default.
    assert dictionary == {"x", "s", "n"}


def test_row_groups_written_behind_land_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small row groups: twelve of them, each encoded in the writer's thread
    # while the next one is gathered.
    monkeypatch.setattr(outputs, "ROW_GROUP_ROWS", 256)
    source = tmp_path / "in.parquet"
    parquet_input(source)
    output = tmp_path / "out"
    output.mkdir()
    writer = ShardWriter(output, 0, 1, "parquet")
    chunks = list(read_chunks(discover(source), 0, ROWS, 128, SCHEMA))
    for chunk, answer in zip(chunks, answer_all_but(128, {BAD}), strict=True):
        writer.write(chunk, answer)
    writer.commit()
    results = pq.ParquetFile(output / "prediction.results-00000-of-00001.parquet")
    assert results.metadata.num_row_groups == math.ceil((ROWS - 1) / 256)
    table = results.read()
    expected = [row for row in range(ROWS) if row != BAD]
    assert table.column("id").to_pylist() == expected
    assert table.column("prediction").to_pylist() == [row * 2.0 for row in expected]
    assert not any(t.name.startswith("write") for t in threading.enumerate())


def test_an_aborted_shard_with_a_row_group_in_flight_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outputs, "ROW_GROUP_ROWS", 128)
    source = tmp_path / "in.parquet"
    parquet_input(source)
    output = tmp_path / "out"
    output.mkdir()
    writer = ShardWriter(output, 0, 1, "parquet")
    chunks = list(read_chunks(discover(source), 0, ROWS, 128, SCHEMA))
    for chunk, answer in list(zip(chunks, answer_all_but(128, set()), strict=True))[:5]:
        writer.write(chunk, answer)
    writer.abort()
    assert list(output.iterdir()) == []
    assert not any(t.name.startswith("write") for t in threading.enumerate())


def test_float32_reads_back_as_the_codec_text_does() -> None:
    # Random bit patterns cover every exponent, subnormals included; then the
    # values next to each power of ten and short decimals, where the shortest
    # text is shortest.
    bits = np.random.default_rng(11).integers(0, 2**32, 300_000, dtype=np.uint64)
    values = bits.astype(np.uint32).view(np.float32)
    powers = np.float32([10.0**exponent for exponent in range(-37, 39)])
    edges = np.concatenate(
        [
            powers,
            np.nextafter(powers, np.float32(0.0)),
            np.nextafter(powers, np.float32(np.inf)),
            np.float32([0.0, -0.0, 0.1, 0.3, 1e-45, 1.17549435e-38, 3.4028235e38]),
            np.float32([float(f"{d}e{e}") for d in range(1, 200) for e in (-9, 0, 9)]),
        ]
    )
    values = np.concatenate([values[np.isfinite(values)], edges, -edges])
    through_text = np.array(
        orjson.loads(orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY)),
        dtype=np.float64,
    )
    answered = read_back(values.reshape(-1, 2) if len(values) % 2 == 0 else values)
    assert answered.dtype == np.float64
    assert np.array_equal(answered.reshape(-1), through_text)
    assert np.array_equal(np.signbit(answered.reshape(-1)), np.signbit(through_text))
    assert read_back(np.float32([[0.1, 2.5]])).tolist() == [[0.1, 2.5]]
