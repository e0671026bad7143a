"""A table chunk's model inputs: text as the codec's bytes, or as the str they decode to."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from servekit.batch.schema import FLOAT, TEXT, InputSchema
from servekit.batch.sources import discover, read_chunks
from servekit_protocol.tensors import numpy_dtype

SCHEMA = InputSchema("serving_default", {"size": FLOAT, "region": TEXT})
DTYPES = {"size": numpy_dtype("DT_FLOAT"), "region": numpy_dtype("DT_STRING")}
REGIONS = ["north", "nörth", "東京", "", "a,b", 'q"uote', "south"]


def write(fmt: str, path: Path) -> None:
    sizes = [float(index) for index in range(len(REGIONS))]
    if fmt == "parquet":
        pq.write_table(pa.table({"size": sizes, "region": REGIONS}), path)
    elif fmt == "csv":
        lines = ["size,region"] + [
            f'{size},"{region.replace(chr(34), chr(34) * 2)}"'
            for size, region in zip(sizes, REGIONS, strict=True)
        ]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    else:
        path.write_text(
            "".join(
                json.dumps({"size": size, "region": region}) + "\n"
                for size, region in zip(sizes, REGIONS, strict=True)
            ),
            encoding="utf-8",
        )


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
@pytest.mark.parametrize("rows", [slice(None), slice(1, 5)])
def test_text_as_str_is_the_codec_bytes_decoded(
    tmp_path: Path, fmt: str, rows: slice
) -> None:
    path = tmp_path / f"in.{fmt}"
    write(fmt, path)
    (chunk,) = read_chunks(discover(path), 0, len(REGIONS), len(REGIONS), SCHEMA)
    assert chunk.table is not None
    offsets = np.arange(len(REGIONS))[rows]
    as_bytes = chunk.table.model_inputs(DTYPES, offsets)
    as_str = chunk.table.model_inputs(DTYPES, offsets, text_as_str=True)
    assert as_bytes is not None and as_str is not None
    assert as_bytes["region"].tolist() == [
        text.encode("utf-8") for text in REGIONS[rows]
    ]
    assert as_str["region"].dtype == object
    assert as_str["region"].tolist() == REGIONS[rows]
    assert all(type(value) is str for value in as_str["region"].tolist())
    np.testing.assert_array_equal(as_str["size"], as_bytes["size"])
    assert as_str["size"].dtype == as_bytes["size"].dtype == np.float32


def test_text_with_a_number_among_it_is_left_to_the_codec(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"size": 1.0, "region": "north"}\n{"size": 2.0, "region": 3}\n')
    (chunk,) = read_chunks(discover(path), 0, 2, 2, SCHEMA)
    assert chunk.table is not None
    assert chunk.table.model_inputs(DTYPES, np.arange(2), text_as_str=True) is None
