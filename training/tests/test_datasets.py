"""Reading user CSVs: column kinds, task choice, and the refusals users will meet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from training.datasets import fingerprint_frame, load_csv_dataset, load_tabular_dataset
from training.errors import DatasetError


def write(path: Path, frame: pd.DataFrame) -> Path:
    frame.to_csv(path, index=False)
    return path


@pytest.fixture
def mixed_csv(tmp_path: Path) -> Path:
    rows = 20
    return write(
        tmp_path / "mixed.csv",
        pd.DataFrame(
            {
                "ratio": np.linspace(0, 1, rows),
                "count": np.arange(rows),
                "city": ["paris", "lyon"] * (rows // 2),
                "flag": [True, False] * (rows // 2),
                "grade": [1, 2, 3, 4] * (rows // 4),
                "target": np.linspace(10, 30, rows),
            }
        ),
    )


def test_columns_map_to_three_kinds(mixed_csv: Path) -> None:
    dataset = load_csv_dataset(mixed_csv, "target")
    assert dataset.task == "regression"
    assert dataset.feature_dtypes() == [
        {"name": "ratio", "dtype": "float64"},
        {"name": "count", "dtype": "int64"},
        {"name": "city", "dtype": "string"},
        {"name": "flag", "dtype": "string"},
        {"name": "grade", "dtype": "int64"},
    ]
    assert dataset.numeric_features == ["ratio", "count", "grade"]
    assert dataset.categorical_features == ["city", "flag"]
    assert set(dataset.frame["flag"]) == {"True", "False"}


def test_integer_target_can_be_classes(mixed_csv: Path) -> None:
    dataset = load_csv_dataset(mixed_csv, "grade", task="classification")
    assert dataset.task == "classification"
    assert sorted(dataset.frame["grade"].unique()) == ["1", "2", "3", "4"]


def test_text_target_is_classification(mixed_csv: Path) -> None:
    assert load_csv_dataset(mixed_csv, "city").task == "classification"


def test_rows_without_target_are_dropped(tmp_path: Path) -> None:
    frame = pd.DataFrame({"x": range(15), "y": [1.0] * 12 + [np.nan] * 3})
    dataset = load_csv_dataset(write(tmp_path / "gaps.csv", frame), "y")
    assert len(dataset.frame) == 12


@pytest.mark.parametrize(
    ("frame", "target", "task", "message"),
    [
        (pd.DataFrame({"x": range(20), "y": range(20)}), "z", "auto", "not found"),
        (pd.DataFrame({"y": range(20)}), "y", "auto", "no feature columns"),
        (pd.DataFrame({"x": range(5), "y": range(5)}), "y", "auto", "at least 10"),
        (
            pd.DataFrame({"x": range(20), "y": ["a", "b"] * 10}),
            "y",
            "regression",
            "not numeric",
        ),
        (
            pd.DataFrame({"x": range(20), "y": ["a"] * 20}),
            "y",
            "auto",
            "single class",
        ),
    ],
)
def test_unusable_csv(
    frame: pd.DataFrame, target: str, task: str, message: str, tmp_path: Path
) -> None:
    path = write(tmp_path / "data.csv", frame)
    with pytest.raises(DatasetError, match=message):
        load_csv_dataset(path, target, task)  # type: ignore[arg-type]


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        load_csv_dataset(tmp_path / "absent.csv", "y")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DatasetError, match="empty"):
        load_csv_dataset(tmp_path / "empty.csv", "y")


def test_csv_and_target_go_together(mixed_csv: Path) -> None:
    with pytest.raises(DatasetError, match="--csv needs --target"):
        load_tabular_dataset(mixed_csv, None)
    with pytest.raises(DatasetError, match="--target needs --csv"):
        load_tabular_dataset(None, "target")


def test_fingerprint_follows_content() -> None:
    frame = pd.DataFrame({"a": [1.0, 2.0], "b": ["x", "y"]})
    same = fingerprint_frame(frame.copy())
    assert fingerprint_frame(frame) == same
    changed = frame.copy()
    changed.loc[1, "a"] = 2.5
    assert fingerprint_frame(changed)["sha256"] != same["sha256"]
    assert same["rows"] == 2
    assert same["columns"] == ["a", "b"]
