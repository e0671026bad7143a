"""One-row calls of a compiled model answer bit for bit as the pickle does.

Random rows, seeded so every run checks the same ones, go one at a time through
the compiled model (its Python one-row path) and through the fitted pipeline:
missing numbers and text, categories never seen in training, zero denominators
(the row path hands those to the array kernels), large and negative values.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from modelserver.compiled import MODEL_FILE, PLAN_FILE, compile_model
from modelserver.compiled.model import CompiledModel, compiled_model
from modelserver.compiled.parity import columns_from_rows
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestRegressor
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler
from training.tabular import import_features_module

FEATURES_SOURCE = (
    Path(__file__).resolve().parents[4]
    / "training/src/training/servekit_tabular_features.py"
)

ROWS_CHECKED = 200
CATEGORIES = ["<1H OCEAN", "INLAND", "NEAR BAY", "NEAR OCEAN", "ISLAND", "", "inland"]


NUMERIC = ["rooms", "bedrooms", "households", "income", "latitude", "longitude"]


def training_frame(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "rooms": rng.uniform(100, 8000, rows),
            "bedrooms": rng.uniform(20, 1500, rows),
            "households": rng.uniform(20, 1500, rows),
            "income": rng.uniform(0.5, 15, rows),
            "latitude": rng.uniform(32, 42, rows),
            "longitude": rng.uniform(-124, -114, rows),
            "ocean_proximity": rng.choice(CATEGORIES[:4], rows).astype(object),
        }
    )
    frame.loc[frame.index[::29], "bedrooms"] = np.nan
    return frame


def column_ratio(X: Any) -> Any:
    return X[:, [0]] / X[:, [1]]


def ratio_name(transformer: Any, names: Any) -> list[str]:
    return ["ratio"]


@pytest.fixture(scope="module")
def fitted() -> tuple[Pipeline, pd.DataFrame]:
    """Every kernel with a row form: impute, ratio, log, scale, RBF, one-hot."""
    module = import_features_module(FEATURES_SOURCE)
    train = training_frame(400, seed=21)
    preprocessing = ColumnTransformer(
        [
            (
                "ratio",
                make_pipeline(
                    SimpleImputer(strategy="median"),
                    FunctionTransformer(column_ratio, feature_names_out=ratio_name),
                    StandardScaler(),
                ),
                ["bedrooms", "rooms"],
            ),
            (
                "log",
                make_pipeline(
                    SimpleImputer(strategy="median"),
                    FunctionTransformer(np.log, feature_names_out="one-to-one"),
                    StandardScaler(),
                ),
                NUMERIC[:4],
            ),
            (
                "geo",
                make_pipeline(
                    SimpleImputer(strategy="median"),
                    StandardScaler(),
                    module.ClusterSimilarity(n_clusters=6, gamma=1.0, random_state=4),
                ),
                ["latitude", "longitude"],
            ),
            (
                "category",
                make_pipeline(
                    SimpleImputer(strategy="most_frequent"),
                    OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                ),
                ["ocean_proximity"],
            ),
        ]
    )
    target = train["income"] * 40_000 + (train["latitude"] - 37) * 5_000
    pipeline = Pipeline(
        [
            ("preprocess", preprocessing),
            ("model", RandomForestRegressor(n_estimators=8, random_state=0)),
        ]
    ).fit(train, target)
    return pipeline, train


def features_of(frame: pd.DataFrame) -> list[tuple[str, str]]:
    return [
        (str(name), "string" if name == "ocean_proximity" else "float64")
        for name in frame.columns
    ]


def compiled_of(pipeline: Pipeline, frame: pd.DataFrame) -> CompiledModel:
    examples = [
        {k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()}
        for row in frame.head(5).to_dict(orient="records")
    ]
    result = compile_model(
        pipeline, features=features_of(frame), examples=examples, heldout=[]
    )
    assert result.verdict["status"] == "passed", result.verdict
    return compiled_model(json.loads(result.files[PLAN_FILE]), result.files[MODEL_FILE])


def random_rows(frame: pd.DataFrame, count: int, seed: int) -> list[dict[str, Any]]:
    """Rows around the training data's ranges, with the cases the kernels branch on."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    for _ in range(count):
        row: dict[str, Any] = {}
        for name in frame.columns:
            if name == "ocean_proximity":
                pick = rng.integers(0, len(CATEGORIES) + 1)
                row[name] = None if pick == len(CATEGORIES) else CATEGORIES[pick]
                continue
            low, high = float(frame[name].min()), float(frame[name].max())
            case = rng.integers(0, 10)
            if case == 0:
                row[name] = None  # missing: imputed
            elif case == 1:
                row[name] = 0.0  # a ratio's zero denominator
            elif case == 2:
                span = 10 * max(abs(low), abs(high))
                row[name] = float(rng.uniform(-span, span))
            elif case == 3:
                row[name] = float(rng.integers(-5, 5_000))
            else:
                row[name] = float(rng.uniform(low, high))
        rows.append(row)
    return rows


def same_bits(expected: Any, actual: Any) -> bool:
    expected = np.asarray(expected, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    if expected.shape != actual.shape:
        return False
    nan = np.isnan(expected)
    if not np.array_equal(nan, np.isnan(actual)):
        return False
    return bool(
        np.array_equal(expected[~nan].view(np.uint64), actual[~nan].view(np.uint64))
    )


@pytest.mark.parametrize("seed", [11, 12])
def test_one_row_calls_match_the_pipeline_bit_for_bit(
    seed: int, fitted: tuple[Pipeline, pd.DataFrame]
) -> None:
    pipeline, train = fitted
    compiled = compiled_of(pipeline, train)
    assert compiled.handles_rows
    features = features_of(train)
    preprocessing = pipeline[:-1]
    answered = 0
    for row in random_rows(train, ROWS_CHECKED, seed):
        columns = columns_from_rows([row], features)
        if not columns[features[0][0]].size:
            continue  # a missing text value: no request can carry it
        frame = pd.DataFrame(columns)
        with warnings.catch_warnings():
            # log of a negative number, overflow: NaN and infinity, as intended
            warnings.simplefilter("ignore", RuntimeWarning)
            try:
                expected_features = preprocessing.transform(frame)
            except ValueError:
                continue  # infinity from a zero denominator: the pickle refuses
            actual_features = compiled.transform(columns)
        assert same_bits(expected_features, actual_features), row
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                expected = pipeline.predict(frame)
        except ValueError:
            with pytest.raises(ValueError):  # NaN or float32 overflow: refused
                compiled.predict(columns)
            continue
        assert same_bits(expected, compiled.predict(columns)), row
        answered += 1
    assert answered > ROWS_CHECKED // 3
