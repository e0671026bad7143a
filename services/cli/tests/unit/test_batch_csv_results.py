"""CSV results: rows written a run of columns at a time equal the cell-by-cell text."""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pyarrow as pa
import pytest
from servekit.batch.tables import cell_texts, csv_rows


def cell_by_cell(table: pa.Table) -> bytes:
    """Each cell as :func:`cell_texts` writes it, joined row by row."""
    columns = [cell_texts(column) for column in table.columns]
    return b"".join(b",".join(row) + b"\r\n" for row in zip(*columns, strict=True))


def mixed_table(rows: int, seed: int) -> pa.Table:
    generator = np.random.default_rng(seed)
    scale = 10.0 ** generator.integers(-30, 30, rows)
    floats = generator.standard_normal(rows) * scale
    probabilities = generator.dirichlet(np.ones(10), rows)
    return pa.table(
        {
            "p0": floats.astype(np.float32),
            "p1": floats,
            "p2": (floats * 3).astype(np.float32),
            "n": generator.integers(-(2**62), 2**62, rows),
            "small": generator.integers(-100, 100, rows).astype(np.int8),
            "big": pa.array(
                generator.integers(0, 2**63, rows).astype(np.uint64) * 2, pa.uint64()
            ),
            "flag": generator.random(rows) > 0.5,
            "s": [f'a,"{row}"\n' if row % 3 else f"t{row}" for row in range(rows)],
            "single": floats[:, None].tolist(),
            "probabilities": probabilities.tolist(),
            "probabilities32": pa.array(
                probabilities.astype(np.float32).tolist(), pa.list_(pa.float32())
            ),
            "labels": generator.integers(0, 9, (rows, 3)).tolist(),
            "huge": pa.array(
                [[2**64 - 1 - row, row] for row in range(rows)],
                pa.list_(pa.uint64()),
            ),
            "ragged": [list(range(row % 4)) for row in range(rows)],
            "last": floats * 7,
        }
    )


@pytest.mark.parametrize("seed", range(4))
def test_runs_of_columns_are_written_as_each_cell_is(seed: int) -> None:
    table = mixed_table(300, seed)
    assert csv_rows(table) == cell_by_cell(table)


def test_a_table_of_chunks_is_written_as_one() -> None:
    first, second = mixed_table(50, 1), mixed_table(70, 2)
    joined = pa.concat_tables([first, second])
    assert joined.column("p0").num_chunks == 2
    assert csv_rows(joined) == csv_rows(first) + csv_rows(second)
    assert csv_rows(joined) == cell_by_cell(joined)


@pytest.mark.parametrize(
    "odd",
    [
        pa.array([1.0, math.nan, 2.0]),
        pa.array([1.0, math.inf, -math.inf]),
        pa.array([1.0, None, 2.0]),
    ],
    ids=["nan", "infinities", "null"],
)
def test_non_finite_and_missing_numbers_keep_their_csv_text(odd: pa.Array) -> None:
    table = pa.table(
        {
            "a": [0.5, 0.25, 1e-5],
            "odd": odd,
            "b": [3.0, 4.0, 5.0],
            "list": pa.array(
                [[1.0, odd[0].as_py()], [odd[1].as_py(), 2.0], [odd[2].as_py(), 3.0]],
                pa.list_(pa.float64()),
            ),
        }
    )
    written = csv_rows(table)
    assert written == cell_by_cell(table)
    cells = [row[1] for row in csv.reader(io.StringIO(written.decode()))]
    assert cells[1] in ("nan", "inf", "")


def test_lists_of_one_value_are_not_quoted_and_longer_ones_are() -> None:
    table = pa.table({"one": [[0.5], [2.0]], "two": [[1, 2], [3, 4]], "x": [1.5, 2.5]})
    assert csv_rows(table) == b'[0.5],"[1,2]",1.5\r\n[2.0],"[3,4]",2.5\r\n'


@pytest.mark.parametrize("kind", [pa.string(), pa.large_string()])
def test_text_cells_are_quoted_as_the_csv_module_quotes_them(
    kind: pa.DataType,
) -> None:
    values = ["plain", "a,b", 'say "hi"', "two\nlines", "cr\rend", "ünï ✓", "", " "]
    table = pa.table(
        {"t": pa.array(values, kind), "u": pa.array(values[::-1], kind), "n": range(8)}
    )
    expected = io.StringIO()
    csv.writer(expected).writerows(zip(values, values[::-1], range(8), strict=True))
    assert csv_rows(table) == expected.getvalue().encode("utf-8")
    unquoted = pa.table({"t": pa.array(["x", "y"], kind)})
    assert csv_rows(unquoted) == b"x\r\ny\r\n"
