"""A Parquet file's columns as a matrix input, and what a block of rows skips."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from servekit.batch.schema import FLOAT, TEXT, InputSchema
from servekit.batch.sources import READ_CHUNKS, discover, read_chunks, read_ranges
from servekit.batch.tablechunks import TablePiece
from servekit_protocol import json_codec

MATRIX = InputSchema("serving_default", {"pixels": FLOAT})
CHUNK_ROWS = 5
ROWS = 3 * CHUNK_ROWS * READ_CHUNKS + 7


def matrix_file(path: Path, arrow_type: pa.DataType) -> np.ndarray[Any, Any]:
    """Eight columns of ``arrow_type`` (NaN and infinities among them), one row
    group, so a read of a later range starts at the file's first row."""
    generator = np.random.default_rng(3)
    values = generator.standard_normal((ROWS, 8)) * 10.0 ** generator.integers(
        -5, 5, (ROWS, 8)
    )
    values[::17, 2] = np.nan
    values[::29, 5] = np.inf
    values[::31, 6] = -np.inf
    columns = {
        f"pixel_{index}": pa.array(values[:, index]).cast(arrow_type)
        for index in range(8)
    }
    pq.write_table(pa.table(columns), path, row_group_size=ROWS)
    return values


@pytest.mark.parametrize("arrow_type", [pa.float32(), pa.float64()])
@pytest.mark.parametrize("model_dtype", ["DT_FLOAT", "DT_DOUBLE"])
def test_a_matrix_input_is_the_codecs_matrix_of_its_rows(
    tmp_path: Path, arrow_type: pa.DataType, model_dtype: str
) -> None:
    path = tmp_path / "in.parquet"
    matrix_file(path, arrow_type)
    specs = {"pixels": json_codec.TensorSpec(model_dtype, None)}
    dtype = (
        json_codec.parse_predict_request(b'{"instances":[[1.0]]}', specs)
        .inputs["pixels"]
        .dtype
    )
    # A range that starts and ends inside reads, chunks across two reads.
    ranges = [(CHUNK_ROWS * READ_CHUNKS - 2, ROWS - 3)]
    chunks = [chunk for _, chunk in read_ranges(discover(path), ranges, 7, MATRIX)]
    assert sum(map(len, chunks)) == ranges[0][1] - ranges[0][0]
    for chunk in chunks:
        assert chunk.table is not None
        for offsets in (np.arange(len(chunk)), np.arange(0, len(chunk), 2)):
            requests = [chunk.request(int(offset)) for offset in offsets]
            body = orjson.dumps({"instances": requests}).replace(b'"NaN"', b"NaN")
            expected = json_codec.parse_predict_request(
                json_codec.dumps({"instances": requests})
                if b"Infinity" in body
                else body,
                specs,
            ).inputs["pixels"]
            arrays = chunk.table.model_inputs({"pixels": dtype}, offsets)
            assert arrays is not None
            got = arrays["pixels"]
            assert (got.dtype, got.shape) == (expected.dtype, expected.shape)
            assert got.flags["C_CONTIGUOUS"]
            np.testing.assert_array_equal(got, expected)


def test_a_wide_matrix_of_mixed_columns_is_the_codecs_matrix(tmp_path: Path) -> None:
    """100 columns (more than numpy's result_type takes), float32 and int64:
    the matrix is the codec's float64 matrix of the rows."""
    path = tmp_path / "in.parquet"
    columns = {
        f"c{index}": pa.array(
            [row * (index + 1) for row in range(9)],
            pa.int64() if index % 3 else pa.float32(),
        )
        for index in range(100)
    }
    pq.write_table(pa.table(columns), path)
    (chunk,) = read_chunks(discover(path), 0, 9, 9, MATRIX)
    assert chunk.table is not None
    requests = [chunk.request(offset) for offset in range(9)]
    specs = {"pixels": json_codec.TensorSpec("DT_DOUBLE", None)}
    expected = json_codec.parse_predict_request(
        orjson.dumps({"instances": requests}), specs
    ).inputs["pixels"]
    arrays = chunk.table.model_inputs({"pixels": expected.dtype}, np.arange(9))
    assert arrays is not None
    assert arrays["pixels"].dtype == np.dtype(np.float64)
    assert arrays["pixels"].shape == (9, 100)
    np.testing.assert_array_equal(arrays["pixels"], expected)


def test_a_matrix_input_is_the_calls_own_array(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    values = matrix_file(path, pa.float32())
    (chunk,) = read_chunks(discover(path), 0, 4, 4, MATRIX)
    assert chunk.table is not None
    dtype = np.dtype(np.float32)
    first = chunk.table.model_inputs({"pixels": dtype}, np.arange(4))
    assert first is not None
    first["pixels"][:] = 0.0
    again = chunk.table.model_inputs({"pixels": dtype}, np.arange(4))
    assert again is not None
    np.testing.assert_array_equal(again["pixels"], values[:4].astype(np.float32))
    np.testing.assert_array_equal(
        np.asarray(chunk.instance_value(0)), values[0].astype(np.float32)
    )


def test_text_as_str_is_the_calls_own_array(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"x": [1.0, 2.0], "s": ["a", "b"]}), path)
    schema = InputSchema("serving_default", {"x": FLOAT, "s": TEXT})
    (chunk,) = read_chunks(discover(path), 0, 2, 2, schema)
    assert chunk.table is not None
    dtypes = {"x": np.dtype(np.float64), "s": np.dtype(object)}
    arrays = chunk.table.model_inputs(dtypes, np.arange(2), text_as_str=True)
    assert arrays is not None
    arrays["s"][0] = "changed"
    assert chunk.instance_value(0) == {"x": 1.0, "s": "a"}
    again = chunk.table.model_inputs(dtypes, np.asarray([1]), text_as_str=True)
    assert again is not None and again["s"].tolist() == ["b"]


def test_reads_before_the_first_row_wanted_are_not_converted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's block that starts half way through a one-group file decodes
    the rows before it but converts none of them."""
    path = tmp_path / "in.parquet"
    rows = 4 * CHUNK_ROWS * READ_CHUNKS
    pq.write_table(pa.table({"a": [float(r) for r in range(rows)]}), path, rows)
    converted: list[float] = []
    convert = TablePiece.converted

    def recording(batch: pa.RecordBatch, schema: InputSchema) -> TablePiece | None:
        converted.append(batch.column(0)[0].as_py())
        return convert(batch, schema)

    monkeypatch.setattr(TablePiece, "converted", staticmethod(recording))
    schema = InputSchema("serving_default", {"a": FLOAT})
    start = 2 * CHUNK_ROWS * READ_CHUNKS + 3
    chunks = list(read_chunks(discover(path), start, rows, CHUNK_ROWS, schema))
    read = [c.instance_value(o)["a"] for c in chunks for o in range(len(c))]
    assert read == [float(r) for r in range(start, rows)]
    assert converted and min(converted) == 2 * CHUNK_ROWS * READ_CHUNKS


@pytest.mark.parametrize("start", [0, 3, CHUNK_ROWS * READ_CHUNKS - 4])
def test_the_first_chunk_is_read_before_a_whole_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start: int
) -> None:
    """The model waits for the first chunk only: the rows up to its end are
    read apart (when that is under half a read); the rows come out once, in
    order."""
    path = tmp_path / "in.parquet"
    rows = 3 * CHUNK_ROWS * READ_CHUNKS
    pq.write_table(pa.table({"a": [float(r) for r in range(rows)]}), path, rows)
    sizes: list[int] = []
    iter_batches = pq.ParquetFile.iter_batches

    def recording(self: pq.ParquetFile, **options: Any) -> Any:
        sizes.append(options["batch_size"])
        return iter_batches(self, **options)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", recording)
    schema = InputSchema("serving_default", {"a": FLOAT})
    chunks = list(read_chunks(discover(path), start, rows, CHUNK_ROWS, schema))
    read = [c.instance_value(o)["a"] for c in chunks for o in range(len(c))]
    assert read == [float(r) for r in range(start, rows)]
    assert [c.start for c in chunks] == list(range(start, rows, CHUNK_ROWS))
    whole = CHUNK_ROWS * READ_CHUNKS
    if start + CHUNK_ROWS <= whole // 2:
        assert sorted(sizes) == [start + CHUNK_ROWS, whole]
    else:
        assert sizes == [whole]
