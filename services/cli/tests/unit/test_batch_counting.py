"""CSV row counts from line breaks agree with what the parser reads."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from servekit.batch.counting import count_csv_rows
from servekit.batch.csvtext import csv_pieces

CSV_TEXTS = {
    "plain": "a,b\n1,2\n3,4\n",
    "no final break": "a,b\n1,2\n3,4",
    "empty lines": "a,b\n\n1,2\n\n\n3,4\n\n",
    "quoted commas": 'a,b\n"1,5",2\n"say ""hi""",4\n',
    "a bad row": "a,b\n1,2,3\n4\n5,6\n",
    "blank cells": "a,b\n,\n1,\n",
    "header only": "a,b\n",
    "empty file": "",
}


def parsed_rows(path: Path) -> int:
    return sum(
        piece.num_rows if isinstance(piece, pa.RecordBatch) else 1
        for piece in csv_pieces(path)
    )


@pytest.mark.parametrize("block_bytes", [1, 3, 7, 1 << 22])
@pytest.mark.parametrize("name", list(CSV_TEXTS))
def test_csv_lines_are_rows_where_no_cell_spans_lines(
    tmp_path: Path, name: str, block_bytes: int
) -> None:
    path = tmp_path / "in.csv"
    path.write_text(CSV_TEXTS[name])
    assert count_csv_rows(path, block_bytes) == parsed_rows(path)


@pytest.mark.parametrize("block_bytes", [1, 4, 1 << 22])
@pytest.mark.parametrize(
    "text",
    [
        'a,b\n"two\nlines",2\n3,4\n',  # a quoted line break
        "a,b\r\n1,2\r\n",  # carriage returns
        "\na,b\n1,2\n",  # an empty first line
    ],
)
def test_files_whose_lines_may_not_be_rows_are_left_to_the_parser(
    tmp_path: Path, text: str, block_bytes: int
) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(text.encode())
    assert count_csv_rows(path, block_bytes) is None
