"""Tabular training data: the bundled default, user CSVs, and their fingerprints.

Every dataset comes out normalised the same way, so the pipeline and the manifest can
rely on three column kinds only: ``int64`` and ``float64`` (numeric branch) and
``string`` (one-hot branch; object columns holding ``str`` values, missing as NaN).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pandas.api import types as pdtypes

from training.errors import DatasetError

TaskName = Literal["regression", "classification"]
TaskChoice = Literal["auto", "regression", "classification"]

DIABETES_TARGET = "progression"
MIN_ROWS = 10


@dataclass(frozen=True)
class TabularDataset:
    """Feature columns plus one target column, normalised as the module describes."""

    frame: pd.DataFrame
    target: str
    task: TaskName
    source: str

    @property
    def features(self) -> list[str]:
        """Feature column names in column order."""
        return [str(column) for column in self.frame.columns if column != self.target]

    @property
    def numeric_features(self) -> list[str]:
        """Feature columns of the numeric branch, in column order."""
        return [
            name
            for name in self.features
            if feature_dtype(self.frame[name]) in ("int64", "float64")
        ]

    @property
    def categorical_features(self) -> list[str]:
        """Feature columns of the one-hot branch, in column order."""
        return [
            name
            for name in self.features
            if feature_dtype(self.frame[name]) == "string"
        ]

    def feature_dtypes(self) -> list[dict[str, str]]:
        """The manifest's ``features`` list: name and dtype per column, in order."""
        return [
            {"name": name, "dtype": feature_dtype(self.frame[name])}
            for name in self.features
        ]

    def fingerprint(self) -> dict[str, Any]:
        """sha256 of the frame's CSV bytes, with its row count and column names."""
        return fingerprint_frame(self.frame)


def feature_dtype(column: pd.Series) -> str:
    """The manifest dtype string of a normalised column."""
    if pdtypes.is_bool_dtype(column):
        return "string"
    if pdtypes.is_integer_dtype(column):
        return "int64"
    if pdtypes.is_float_dtype(column):
        return "float64"
    return "string"


def fingerprint_frame(frame: pd.DataFrame) -> dict[str, Any]:
    """Identify training data by content: same rows and values, same sha256."""
    csv_bytes = frame.to_csv(index=False, lineterminator="\n").encode("utf-8")
    return {
        "sha256": hashlib.sha256(csv_bytes).hexdigest(),
        "rows": len(frame),
        "columns": [str(column) for column in frame.columns],
    }


def load_diabetes_dataset() -> TabularDataset:
    """The default tabular data: scikit-learn's bundled diabetes set, made messier.

    Columns (442 rows): ``bmi``, ``bp`` (mean arterial pressure), ``age`` (years,
    int64), ``sex`` (1 or 2, int64), ``s1`` .. ``s6`` (six blood serum measurements),
    ``bmi_class`` (string: WHO category "underweight", "normal", "overweight" or
    "obese", derived from ``bmi``) and the target ``progression`` (disease
    progression one year after baseline). ``bmi`` and ``bp`` come first because the
    cluster-similarity features use the first two numeric columns.

    A few values are set missing at fixed rows (``bmi``, ``s5``, ``bmi_class``) so
    the pipeline's imputers have work to do. Nothing depends on the training seed:
    the same data, and the same fingerprint, every time.
    """
    # Imported here: scikit-learn takes seconds to import, and a CLI that only
    # reports a bad CSV should not pay for it.
    from sklearn.datasets import load_diabetes

    raw = load_diabetes(as_frame=True, scaled=False).frame
    frame = pd.DataFrame(
        {
            "bmi": raw["bmi"].astype("float64"),
            "bp": raw["bp"].astype("float64"),
            "age": raw["age"].round().astype("int64"),
            "sex": raw["sex"].round().astype("int64"),
            **{
                name: raw[name].astype("float64")
                for name in ("s1", "s2", "s3", "s4", "s5", "s6")
            },
            "bmi_class": pd.Series(
                pd.cut(
                    raw["bmi"],
                    bins=[-np.inf, 18.5, 25.0, 30.0, np.inf],
                    labels=["underweight", "normal", "overweight", "obese"],
                    right=False,
                ).astype(str),
                dtype=object,
            ),
            DIABETES_TARGET: raw["target"].astype("float64"),
        }
    )
    rows = np.arange(len(frame))
    frame.loc[rows % 29 == 3, "bmi"] = np.nan
    frame.loc[rows % 31 == 11, "s5"] = np.nan
    frame.loc[rows % 37 == 5, "bmi_class"] = np.nan
    return TabularDataset(
        frame=frame, target=DIABETES_TARGET, task="regression", source="diabetes"
    )


def load_tabular_dataset(
    csv: Path | None, target: str | None, task: TaskChoice = "auto"
) -> TabularDataset:
    """The bundled data, or the user's CSV when one is given.

    Raises:
        DatasetError: a CSV without a target, or one ``load_csv_dataset`` rejects.
    """
    if csv is None:
        if target is not None:
            raise DatasetError("--target needs --csv (the bundled data has its own)")
        return load_diabetes_dataset()
    if target is None:
        raise DatasetError("--csv needs --target COLUMN (the column to predict)")
    return load_csv_dataset(csv, target, task)


def load_csv_dataset(
    path: Path, target: str, task: TaskChoice = "auto"
) -> TabularDataset:
    """Read a user's CSV: every column but ``target`` is a feature.

    Integer columns become ``int64``, other numeric columns ``float64``, anything else
    (text, booleans) ``string``. Rows without a target value are dropped. With
    ``task="auto"`` a numeric target means regression, any other a classification.

    Raises:
        DatasetError: The file is missing or unreadable, the target column is absent,
            or too little usable data remains.
    """
    if not path.is_file():
        raise DatasetError(f"CSV file not found: {path}")
    try:
        raw = pd.read_csv(path)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise DatasetError(f"cannot read CSV {path}: {exc}") from exc
    except pd.errors.EmptyDataError as exc:
        raise DatasetError(f"CSV {path} is empty") from exc
    raw.columns = [str(column) for column in raw.columns]
    if target not in raw.columns:
        columns = ", ".join(raw.columns) or "none"
        raise DatasetError(
            f"target column {target!r} not found in {path} (columns: {columns})"
        )
    if len(raw.columns) < 2:
        raise DatasetError(f"CSV {path} has no feature columns besides {target!r}")
    raw = raw[raw[target].notna()].reset_index(drop=True)
    if len(raw) < MIN_ROWS:
        raise DatasetError(
            f"CSV {path} has {len(raw)} rows with a {target!r} value; "
            f"at least {MIN_ROWS} are needed"
        )
    resolved = resolve_task(raw[target], target, task)
    frame = pd.DataFrame(
        {
            column: normalise_target(raw[column], resolved)
            if column == target
            else normalise_feature(raw[column])
            for column in raw.columns
        }
    )
    if resolved == "classification" and frame[target].nunique() < 2:
        raise DatasetError(f"target column {target!r} has a single class")
    return TabularDataset(frame=frame, target=target, task=resolved, source=str(path))


def resolve_task(column: pd.Series, target: str, task: TaskChoice) -> TaskName:
    """Pick regression or classification for a target column.

    Raises:
        DatasetError: Regression was asked for on a non-numeric target.
    """
    numeric = pdtypes.is_numeric_dtype(column) and not pdtypes.is_bool_dtype(column)
    if task == "auto":
        return "regression" if numeric else "classification"
    if task == "regression" and not numeric:
        raise DatasetError(
            f"target column {target!r} is not numeric; "
            "regression needs numbers (use --task classification)"
        )
    return task


def normalise_feature(column: pd.Series) -> pd.Series:
    """Map a raw CSV column onto int64, float64 or string (object of str)."""
    if pdtypes.is_bool_dtype(column):
        return to_strings(column)
    if pdtypes.is_integer_dtype(column):
        return column.astype("int64")
    if pdtypes.is_numeric_dtype(column):
        return column.astype("float64")
    return to_strings(column)


def normalise_target(column: pd.Series, task: TaskName) -> pd.Series:
    """Regression targets become float64; class labels become strings."""
    if task == "regression":
        return column.astype("float64")
    if pdtypes.is_float_dtype(column) and bool((column % 1 == 0).all()):
        # "1.0" would be a surprising class name for a column of whole numbers.
        column = column.astype("int64")
    return to_strings(column)


def to_strings(column: pd.Series) -> pd.Series:
    """Object column of ``str`` values, missing values as NaN."""
    values = [np.nan if pd.isna(value) else str(value) for value in column]
    return pd.Series(values, index=column.index, dtype=object, name=column.name)
