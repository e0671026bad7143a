"""The pure parts of batch jobs: references, readers, splitting, shard layout, writers."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from servekit.batch.answers import prediction_texts
from servekit.batch.job import ShardPlan
from servekit.batch.outcomes import Bulk, Encoded, Predictions, RowError
from servekit.batch.outputs import ShardWriter
from servekit.batch.predictors import (
    BatchRejected,
    body_of,
    chunk_body,
    predict_splitting,
)
from servekit.batch.refs import ModelRef, ShardSlice, parse_model_ref, parse_shard
from servekit.batch.schema import FLOAT, INTEGER, TEXT, InputSchema, value_kind
from servekit.batch.sources import Chunk, discover, read_chunks
from servekit.console import CommandError
from servekit_protocol import json_codec
from servekit_protocol.tensors import numpy_dtype

NAMED = InputSchema("serving_default", {"a": FLOAT, "n": INTEGER, "s": TEXT})
MATRIX = InputSchema("serving_default", {"pixels": FLOAT})


def encoded(chunk: Chunk) -> list[Any]:
    """The chunk's instances as the JSON a request would carry."""
    return [
        json.loads(orjson.dumps(chunk.instance(offset)).replace(b"NaN", b'"NaN"'))
        for offset in range(len(chunk))
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tabular", ModelRef("tabular")),
        ("tabular:12", ModelRef("tabular", version=12)),
        ("tabular@stable", ModelRef("tabular", label="stable")),
    ],
)
def test_model_references(text: str, expected: ModelRef) -> None:
    assert parse_model_ref(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize("text", ["", "tabular:", "tabular:0", "tabular:x", "a@b@c"])
def test_bad_model_references(text: str) -> None:
    with pytest.raises(CommandError, match="invalid --model"):
        parse_model_ref(text)


def test_shard_slices_share_every_output_shard_once() -> None:
    slices = [parse_shard(f"{index}/3") for index in range(3)]
    owners = [[s.index for s in slices if s.owns(shard)] for shard in range(10)]
    assert all(len(owner) == 1 for owner in owners)
    assert parse_shard("0/1") == ShardSlice()
    for bad in ("3/3", "1", "-1/2", "0/0"):
        with pytest.raises(CommandError, match="invalid --shard"):
            parse_shard(bad)


def test_shard_plan_covers_every_row_once() -> None:
    plan = ShardPlan(rows=25, rows_per_shard=10)
    assert plan.count == 3
    assert [plan.bounds(k) for k in range(3)] == [(0, 10), (10, 20), (20, 25)]
    assert ShardPlan(rows=0, rows_per_shard=10).count == 1


def test_csv_cells_are_typed_by_the_signature_and_bad_rows_named(
    tmp_path: Path,
) -> None:
    path = tmp_path / "in.csv"
    path.write_text(
        "a,n,s,extra\n"
        "1.5,2,x,7\n"
        ",3,y,8\n"  # empty number: NaN
        "2.5,three,z,9\n"  # not an integer
        "1.0,4\n"  # too few cells
        "4.5,5,w,10\n"
    )
    (source,) = discover(path)
    assert source.rows == 5
    chunks = list(read_chunks([source], 0, 5, 3, NAMED))
    assert [chunk.start for chunk in chunks] == [0, 3]
    first, second = chunks
    assert encoded(first) == [
        {"a": 1.5, "n": 2, "s": "x", "extra": 7},
        {"a": "NaN", "n": 3, "s": "y", "extra": 8},
        {"a": "2.5", "n": "three", "s": "z", "extra": "9"},
    ]
    assert first.read_errors == {2: "column n: 'three' is not an integer"}
    # The column no input takes stays in the instance, and is not sent.
    assert first.request(0) == {"a": 1.5, "n": 2, "s": "x"}
    assert [second.request(k) for k in (0, 1)] == [
        "1.0,4",
        {"a": 4.5, "n": 5, "s": "w"},
    ]
    assert second.read_errors == {0: "line 5: expected 4 columns, got 2"}
    assert second.instance(0) == "1.0,4"
    assert encoded(second)[1] == {"a": 4.5, "n": 5, "s": "w", "extra": 10}


def test_rows_are_numbered_across_the_files_of_a_folder(tmp_path: Path) -> None:
    (tmp_path / "b.jsonl").write_text('[3.0]\n\n[4.0]\n{"pixels": \n')
    (tmp_path / "a.csv").write_text("p0,p1\n1,2\n3,4\n")
    pq.write_table(pa.table({"x": [5.0, None]}), tmp_path / "c.parquet")
    files = discover(tmp_path)
    assert [(f.path.name, f.rows) for f in files] == [
        ("a.csv", 2),
        ("b.jsonl", 3),
        ("c.parquet", 2),
    ]
    chunks = list(read_chunks(files, 1, 7, 2, MATRIX))
    assert [(chunk.start, len(chunk)) for chunk in chunks] == [
        (1, 1),
        (2, 2),
        (4, 1),
        (5, 2),
    ]
    assert encoded(chunks[0]) == [[3.0, 4.0]]  # unnamed columns: one list
    assert encoded(chunks[1]) == [[3.0], [4.0]]  # JSON Lines: as written
    assert chunks[2].read_errors[0].startswith("JSON Parse error")
    assert encoded(chunks[3]) == [5.0, "NaN"]  # one unnamed column: bare values
    assert math.isnan(chunks[3].instance_value(1))


def test_a_missing_input_column_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("a,s\n1,x\n")
    with pytest.raises(CommandError, match="no column for input"):
        list(read_chunks(discover(path), 0, 1, 10, NAMED))


def test_unknown_inputs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="no such file"):
        discover(tmp_path / "missing.csv")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(CommandError, match="no input files"):
        discover(tmp_path)
    with pytest.raises(CommandError, match="unknown input format"):
        discover(tmp_path / "notes.txt")


def test_splitting_isolates_the_rows_a_batch_is_refused_for() -> None:
    calls: list[int] = []

    def call(instances: Sequence[Any]) -> list[Any]:
        calls.append(len(instances))
        if any(value < 0 for value in instances):
            raise BatchRejected("INVALID_ARGUMENT", "negative")
        return [value * 2 for value in instances]

    outcomes = predict_splitting([1, 2, -3, 4, 5, -6, 7, 8], call)
    assert outcomes == [
        2,
        4,
        RowError("INVALID_ARGUMENT", "negative"),
        8,
        10,
        RowError("INVALID_ARGUMENT", "negative"),
        14,
        16,
    ]
    assert calls[0] == 8
    assert len(calls) < 16


def test_a_shard_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    chunk = Chunk(0, [{"a": 1.0}, "broken", {"a": 2.0}], read_errors={1: "bad line"})
    writer = ShardWriter(tmp_path, 0, 2, "jsonl")
    writer.write(chunk, Predictions({0: 10.0, 2: RowError("INVALID_ARGUMENT", "no")}))
    assert not list(tmp_path.glob("prediction.*"))
    writer.abort()
    assert not list(tmp_path.iterdir())

    writer = ShardWriter(tmp_path, 1, 2, "jsonl")
    writer.write(chunk, Predictions({0: 10.0, 2: RowError("INVALID_ARGUMENT", "no")}))
    writer.commit()
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "prediction.errors-00001-of-00002",
        "prediction.results-00001-of-00002",
    ]
    results = (tmp_path / "prediction.results-00001-of-00002").read_text()
    assert results == '{"instance":{"a":1.0},"prediction":10.0}\n'
    errors = (tmp_path / "prediction.errors-00001-of-00002").read_text().splitlines()
    assert [json.loads(line) for line in errors] == [
        {
            "instance": "broken",
            "error": {"status": "INVALID_ARGUMENT", "message": "bad line"},
        },
        {
            "instance": {"a": 2.0},
            "error": {"status": "INVALID_ARGUMENT", "message": "no"},
        },
    ]
    assert (writer.succeeded, writer.failed) == (1, 2)


def columns_file(tmp_path: Path, fmt: str, columns: list[str]) -> Path:
    """Numbers with NaN, infinities and exponents, integers, text and booleans."""
    rows = 50
    floats = [row * 0.37 - 4.0 for row in range(rows)]
    floats[3], floats[4], floats[5], floats[6] = math.nan, math.inf, -math.inf, 1e30
    floats[7] = 7.073035e-6
    table = pa.table(
        {
            "a": floats,
            "n": list(range(-rows, 0)),
            "s": [f't{row}%"' for row in range(rows)],
            "flag": [row % 3 == 0 for row in range(rows)],
        }
    ).select(columns)
    path = tmp_path / f"in.{fmt}"
    if fmt == "csv":
        frame = table.to_pandas()
        if "flag" in frame:
            frame["flag"] = frame["flag"].map({True: "true", False: "false"})
        frame.to_csv(path, index=False)
    else:
        pq.write_table(table, path)
    return path


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize(
    ("inputs", "columns"),
    [
        ({"a": "float32", "n": "int64", "s": "string"}, ["a", "n", "s", "flag"]),
        ({"pixels": "float32"}, ["a", "n"]),
        ({"a": "float64"}, ["a"]),
    ],
    ids=["keyed", "matrix", "bare"],
)
def test_table_columns_are_what_the_codec_makes_of_the_rows(
    tmp_path: Path, fmt: str, inputs: dict[str, str], columns: list[str]
) -> None:
    schema = InputSchema(
        "serving_default", {k: value_kind(v) for k, v in inputs.items()}
    )
    path = columns_file(tmp_path, fmt, columns)
    (chunk,) = read_chunks(discover(path), 0, 50, 50, schema)
    assert chunk.table is not None
    offsets = [offset for offset in range(len(chunk)) if offset != 1]
    texts = chunk.instance_texts(offsets)
    assert texts == [orjson.dumps(chunk.instance(offset)) for offset in offsets]
    assert b"NaN" in texts[2] and b"-Infinity" in texts[4]

    body = orjson.dumps({"instances": [chunk.request(offset) for offset in offsets]})
    specs = {name: json_codec.TensorSpec(dtype, None) for name, dtype in inputs.items()}
    expected = json_codec.parse_predict_request(body, specs).inputs
    arrays = chunk.table.model_inputs(
        {name: numpy_dtype(dtype) for name, dtype in inputs.items()},
        np.asarray(offsets),
    )
    assert arrays is not None
    assert list(arrays) == list(expected)
    for name, array in arrays.items():
        assert (array.dtype, array.shape) == (
            expected[name].dtype,
            expected[name].shape,
        )
        assert np.array_equal(array, expected[name], equal_nan=array.dtype.kind == "f")


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize(
    ("inputs", "columns"),
    [
        ({"a": FLOAT, "n": INTEGER, "s": TEXT}, ["a", "n", "s"]),
        ({"a": FLOAT, "n": INTEGER, "s": TEXT}, ["a", "n", "s", "flag"]),
        ({"pixels": FLOAT}, ["a", "n"]),
        ({"a": FLOAT}, ["a"]),
    ],
    ids=["keyed", "keyed-extra", "matrix", "bare"],
)
def test_a_chunks_request_body_is_its_requests_encoded(
    tmp_path: Path, fmt: str, inputs: dict[str, str], columns: list[str]
) -> None:
    path = columns_file(tmp_path, fmt, columns)
    (chunk,) = read_chunks(discover(path), 0, 50, 50, InputSchema("s", inputs))
    offsets = [offset for offset in range(len(chunk)) if offset % 7]
    requests = [chunk.request(offset) for offset in offsets]
    for signature in ("", "serving_default"):
        body = chunk_body(chunk, offsets, signature)
        assert body == body_of(requests, signature)
    assert b"NaN" in body and b"-Infinity" in body


def test_text_or_booleans_for_a_number_are_left_to_the_codec(tmp_path: Path) -> None:
    pq.write_table(pa.table({"a": [True, False]}), tmp_path / "in.parquet")
    (chunk,) = read_chunks(
        discover(tmp_path / "in.parquet"), 0, 2, 2, InputSchema("", {"a": FLOAT})
    )
    assert chunk.table is not None
    assert chunk.table.model_inputs({"a": np.dtype(np.float32)}, np.arange(2)) is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_prediction_texts_are_the_rest_answers_written_back(dtype: type) -> None:
    generator = np.random.default_rng(7)
    scale = 10.0 ** generator.integers(-30, 30, (400, 5))
    values = (generator.standard_normal((400, 5)) * scale).astype(dtype)
    outputs = {
        "scores": values,
        "first": values[:, 0],
        "label": generator.integers(-5, 5, 400),
        "positive": values[:, 1] > 0,
    }
    for names in (["scores"], ["first"], ["label"], list(outputs)):
        chosen = {name: outputs[name] for name in names}
        answer = json_codec.format_predict_response(
            chosen, json_codec.RequestFormat.ROW
        )
        expected = [
            orjson.dumps(prediction)
            for prediction in json_codec.loads(answer)["predictions"]
        ]
        assert prediction_texts(chosen, 400) == expected
    with_nan = {"scores": np.array([[math.nan, 1.0]], dtype=dtype)}
    assert prediction_texts(with_nan, 1) == [b"[null,1.0]"]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize("input_format", ["csv", "parquet"])
def test_table_results_from_arrays_equal_the_row_by_row_route(
    tmp_path: Path, fmt: str, input_format: str
) -> None:
    path = columns_file(tmp_path, input_format, ["a", "n", "s", "flag"])
    (chunk,) = read_chunks(discover(path), 0, 50, 50, NAMED)
    generator = np.random.default_rng(3)
    outputs = {
        "score": (generator.standard_normal(49) * 1e-5).astype(np.float32),
        "probabilities": generator.random((49, 3)),
        "label": generator.integers(0, 9, 49),
    }
    offsets = np.asarray([offset for offset in range(50) if offset != 1])
    refused = {1: RowError("INVALID_ARGUMENT", "refused")}
    texts = prediction_texts(outputs, 49)
    written = {}
    for route, predictions in [
        ("arrays", Predictions(dict(refused), Bulk(offsets, outputs))),
        (
            "rows",
            Predictions(
                {
                    **refused,
                    **{
                        offset: Encoded(text)
                        for offset, text in zip(offsets.tolist(), texts, strict=True)
                    },
                }
            ),
        ),
    ]:
        folder = tmp_path / route
        folder.mkdir()
        writer = ShardWriter(folder, 0, 1, fmt)
        writer.write(chunk, predictions)
        writer.write(chunk, predictions)  # a second chunk appends to the same file
        writer.commit()
        assert (writer.succeeded, writer.failed) == (98, 2)
        (results,) = folder.glob("prediction.results-*")
        written[route] = results.read_bytes()
    assert written["arrays"] == written["rows"]
    table = (
        pq.read_table(tmp_path / "arrays" / "prediction.results-00000-of-00001.parquet")
        if fmt == "parquet"
        else pacsv.read_csv(
            tmp_path / "arrays" / "prediction.results-00000-of-00001.csv",
            convert_options=pacsv.ConvertOptions(
                column_types={"a": pa.float64(), "prediction_score": pa.float64()}
            ),
        )
    )
    assert table.column_names[:4] == ["a", "n", "s", "flag"]
    # In name order, as the REST answers list outputs.
    assert table.column_names[4:] == [
        "prediction_label",
        "prediction_probabilities",
        "prediction_score",
    ]
    # Every float64 reads back as the value the JSON answer gives.
    expected = [json.loads(text)["score"] for text in texts]
    assert table.column("prediction_score").to_pylist() == expected * 2
    values = chunk.table.arrays["a"][offsets] if chunk.table else None
    assert values is not None
    assert np.array_equal(
        table.column("a").to_numpy(),
        np.concatenate([values, values]).astype(np.float64),
        equal_nan=True,
    )


@pytest.mark.parametrize(
    ("inputs", "lines"),
    [
        (
            {"a": "float32", "n": "int64", "s": "string"},
            [
                f'{{"id": {row}, "a": {"NaN" if row == 3 else row * 0.37}, '
                f'"n": {row - 9}, "s": "t{row}"}}'
                for row in range(20)
            ],
        ),
        (
            {"pixels": "float32"},
            [f"[{row}, {row * 0.5}, -1e-7]" for row in range(20)],
        ),
        ({"x": "float64"}, [str(row * 3) for row in range(20)]),
    ],
    ids=["keyed", "matrix", "bare"],
)
def test_json_lines_columns_are_what_the_codec_makes_of_the_rows(
    tmp_path: Path, inputs: dict[str, str], lines: list[str]
) -> None:
    schema = InputSchema(
        "serving_default", {k: value_kind(v) for k, v in inputs.items()}
    )
    lines[5] = "{broken"
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    (chunk,) = read_chunks(discover(path), 0, 20, 20, schema)
    assert chunk.table is not None
    assert list(chunk.read_errors) == [5]
    offsets = chunk.read_offsets()
    # Instances are the lines as written; the request leaves out the "id".
    assert chunk.instance_texts(offsets) == [lines[k].encode() for k in offsets]
    requests = [chunk.request(offset) for offset in offsets]
    if "a" in inputs:
        assert requests[0] == {"a": 0.0, "n": -9, "s": "t0"}
    body = orjson.dumps({"instances": requests})
    # --target's body: the same values (rows that send all they hold are
    # their lines as written).
    assert json_codec.loads(chunk_body(chunk, offsets, "")) == json_codec.loads(body)
    specs = {name: json_codec.TensorSpec(dtype, None) for name, dtype in inputs.items()}
    expected = json_codec.parse_predict_request(body, specs).inputs
    arrays = chunk.table.model_inputs(
        {name: numpy_dtype(dtype) for name, dtype in inputs.items()},
        np.asarray(offsets),
    )
    assert arrays is not None
    for name, array in arrays.items():
        assert (array.dtype, array.shape) == (
            expected[name].dtype,
            expected[name].shape,
        )
        assert np.array_equal(array, expected[name], equal_nan=array.dtype.kind == "f")
