"""Feature dtypes read from fitted pipelines, never guessed."""

from __future__ import annotations

import numpy as np
import pandas as pd
from servekit.featuretypes import fitted_row, inspect_pipeline, known_dtypes
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer, make_column_selector
from sklearn.ensemble import RandomForestRegressor
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler


class Opaque(BaseEstimator, TransformerMixin):  # type: ignore[misc]
    """A custom step: it says nothing about its columns' types."""

    def fit(self, x: object, y: object = None) -> Opaque:
        del x, y
        return self

    def transform(self, x: pd.DataFrame) -> np.ndarray:  # type: ignore[type-arg]
        return np.asarray(x, dtype=float)


def frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "rooms": rng.uniform(1, 9, 40),
            "income": rng.uniform(1, 9, 40),
            "latitude": rng.uniform(32, 42, 40),
            "longitude": rng.uniform(-124, -114, 40),
            "ocean": rng.choice(["INLAND", "NEAR BAY"], 40),
        }
    )


def test_column_selector_routing_tells_text_from_numbers() -> None:
    data = frame()
    model = make_pipeline(
        ColumnTransformer(
            [
                (
                    "log",
                    make_pipeline(
                        SimpleImputer(strategy="median"),
                        FunctionTransformer(np.log),
                        StandardScaler(),
                    ),
                    ["rooms"],
                ),
                ("geo", Opaque(), ["latitude", "longitude"]),
                (
                    "cat",
                    OneHotEncoder(handle_unknown="ignore"),
                    make_column_selector(dtype_include=object),
                ),
            ],
            remainder=StandardScaler(),
        ),
        RandomForestRegressor(n_estimators=2, random_state=0),
    ).fit(data, np.arange(40.0))
    names = list(data.columns)
    findings = inspect_pipeline(model, names)
    dtypes = known_dtypes(findings, names)
    assert dtypes == {
        "rooms": "float64",
        "income": "float64",
        # Only the object selector's routing shows these were not text.
        "latitude": "float64",
        "longitude": "float64",
        "ocean": "string",
    }
    # Latitude and longitude were fitted by a custom step: no value to offer.
    assert fitted_row(findings, dtypes) is None
    # Only rooms meets an imputer before anything else: only it may be missing.
    assert findings.imputed == {"rooms"}


def test_an_imputer_of_another_marker_does_not_make_a_column_nullable() -> None:
    data = frame()[["rooms", "income"]]
    model = make_pipeline(
        ColumnTransformer(
            [
                ("nan", SimpleImputer(strategy="median"), ["rooms"]),
                ("minus", SimpleImputer(missing_values=-1.0), ["income"]),
            ]
        ),
        RandomForestRegressor(n_estimators=2, random_state=0),
    ).fit(data, np.arange(40.0))
    assert inspect_pipeline(model, ["rooms", "income"]).imputed == {"rooms"}


def test_a_custom_step_without_routing_says_nothing() -> None:
    data = frame()[["rooms", "ocean"]]
    model = make_pipeline(
        ColumnTransformer(
            [("kept", Opaque(), ["rooms"]), ("cat", OneHotEncoder(), ["ocean"])]
        ),
        RandomForestRegressor(n_estimators=2, random_state=0),
    ).fit(data, np.arange(40.0))
    assert known_dtypes(
        inspect_pipeline(model, ["rooms", "ocean"]), ["rooms", "ocean"]
    ) == {"ocean": "string"}


def test_fitted_row_uses_medians_and_categories() -> None:
    data = frame()[["rooms", "ocean"]]
    model = make_pipeline(
        ColumnTransformer(
            [
                ("num", SimpleImputer(strategy="median"), ["rooms"]),
                ("cat", OneHotEncoder(), ["ocean"]),
            ]
        ),
        RandomForestRegressor(n_estimators=2, random_state=0),
    ).fit(data, np.arange(40.0))
    findings = inspect_pipeline(model, ["rooms", "ocean"])
    dtypes = known_dtypes(findings, ["rooms", "ocean"])
    assert fitted_row(findings, dtypes) == {
        "rooms": float(data["rooms"].median()),
        "ocean": "INLAND",
    }
