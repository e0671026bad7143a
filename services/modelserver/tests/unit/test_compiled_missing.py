"""Which object cells the compiled imputer treats as missing (no server)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from modelserver.compiled.plan import missing_objects, prepare


def one_cell_at_a_time(item: Any) -> bool:
    # The definition the compiled imputer used before: one Python call a cell.
    return item is None or bool(item != item)


CELLS: list[Any] = [
    "a",
    "",
    "NaN",
    None,
    float("nan"),
    np.float64("nan"),
    np.float32("nan"),
    0.0,
    -0.0,
    1,
    True,
    False,
    float("inf"),
    [1, 2],
    {"k": 1},
]


def test_every_cell_kind_is_judged_as_one_call_a_cell_judges_it() -> None:
    matrix = np.empty((len(CELLS), 2), dtype=object)
    matrix[:, 0] = CELLS
    matrix[:, 1] = CELLS[::-1]
    expected = np.array(
        [[one_cell_at_a_time(item) for item in row] for row in matrix], dtype=bool
    )
    found = missing_objects(matrix)
    assert found.dtype == np.bool_
    assert found.tolist() == expected.tolist()


def test_the_text_imputer_fills_exactly_those_cells() -> None:
    impute = prepare({"kind": "impute", "text": True, "statistics": ["z", "w"]})
    matrix = np.array(
        [["x", None], [float("nan"), "y"], ["", np.float64("nan")]], dtype=object
    )
    filled = impute(matrix, ["first", "second"])
    assert filled.tolist() == [["x", "w"], ["z", "y"], ["", "w"]]
    assert matrix[0, 1] is None  # the request's matrix is left as it came


def test_a_cell_whose_comparison_has_no_truth_raises_as_before() -> None:
    matrix = np.array([["a", pd.NA]], dtype=object)
    with pytest.raises(TypeError):
        one_cell_at_a_time(pd.NA)
    with pytest.raises(TypeError):
        missing_objects(matrix)
