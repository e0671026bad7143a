"""The compiler and the parity gate on fitted pipelines (no server)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from modelserver.compiled import (
    MODEL_FILE,
    PLAN_FILE,
    CompileError,
    compile_model,
    register_converter,
)
from modelserver.compiled.model import CompiledModel, compiled_model
from modelserver.compiled.parity import columns_from_rows, threshold_rows
from modelserver.compiled.plan import UnknownCategory
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.cluster import KMeans
from sklearn.compose import ColumnTransformer, make_column_selector
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.impute import SimpleImputer
from sklearn.metrics.pairwise import rbf_kernel
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import (
    FunctionTransformer,
    OneHotEncoder,
    PolynomialFeatures,
    StandardScaler,
)
from training.tabular import import_features_module

FEATURES_SOURCE = (
    Path(__file__).resolve().parents[4]
    / "training/src/training/servekit_tabular_features.py"
)
ROWS = 500


class ClusterSimilarity(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """Hands-On ML chapter 2's class, as a notebook defines it."""

    def __init__(self, n_clusters: int = 10, gamma: float = 1.0) -> None:
        self.n_clusters = n_clusters
        self.gamma = gamma

    def fit(self, X: Any, y: Any = None) -> ClusterSimilarity:  # noqa: ARG002
        self.kmeans_ = KMeans(self.n_clusters, n_init=10, random_state=42)
        self.kmeans_.fit(X)
        return self

    def transform(self, X: Any) -> Any:
        return rbf_kernel(X, self.kmeans_.cluster_centers_, gamma=self.gamma)

    def get_feature_names_out(self, names: Any = None) -> list[str]:  # noqa: ARG002
        return [f"similarity {i}" for i in range(self.n_clusters)]


class Doubler(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """A custom step whose registered converter (below) is wrong on purpose."""

    def fit(self, X: Any, y: Any = None) -> Doubler:  # noqa: ARG002
        return self

    def transform(self, X: Any) -> Any:
        return np.asarray(X, dtype=np.float64) * 2.0


def column_ratio(X: Any) -> Any:
    return X[:, [0]] / X[:, [1]]


def ratio_name(transformer: Any, names: Any) -> list[str]:
    return ["ratio"]


def housing_frame(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "longitude": rng.uniform(-124, -114, rows),
            "latitude": rng.uniform(32, 42, rows),
            "housing_median_age": rng.integers(1, 52, rows).astype(np.float64),
            "total_rooms": rng.uniform(100, 8000, rows),
            "total_bedrooms": rng.uniform(20, 1500, rows),
            "population": rng.uniform(50, 5000, rows),
            "households": rng.uniform(20, 1500, rows),
            "median_income": rng.uniform(0.5, 15, rows),
            "ocean_proximity": rng.choice(
                ["<1H OCEAN", "INLAND", "NEAR BAY", "NEAR OCEAN"], rows
            ).astype(object),
        }
    )
    frame.loc[frame.index[::37], "total_bedrooms"] = np.nan
    return frame


def housing_target(frame: pd.DataFrame) -> Any:
    return (
        frame["median_income"] * 40_000
        + (frame["latitude"] - 37) * 5_000
        + frame["ocean_proximity"].eq("INLAND") * -30_000
    )


def chapter2_pipeline() -> Pipeline:
    """The shape of Hands-On ML chapter 2's ``preprocessing`` + random forest."""

    def ratio_pipeline() -> Pipeline:
        return make_pipeline(
            SimpleImputer(strategy="median"),
            FunctionTransformer(column_ratio, feature_names_out=ratio_name),
            StandardScaler(),
        )

    log_pipeline = make_pipeline(
        SimpleImputer(strategy="median"),
        FunctionTransformer(np.log, feature_names_out="one-to-one"),
        StandardScaler(),
    )
    cat_pipeline = make_pipeline(
        SimpleImputer(strategy="most_frequent"),
        OneHotEncoder(handle_unknown="ignore"),
    )
    preprocessing = ColumnTransformer(
        [
            ("bedrooms", ratio_pipeline(), ["total_bedrooms", "total_rooms"]),
            ("rooms_per_house", ratio_pipeline(), ["total_rooms", "households"]),
            ("people_per_house", ratio_pipeline(), ["population", "households"]),
            (
                "log",
                log_pipeline,
                [
                    "total_bedrooms",
                    "total_rooms",
                    "population",
                    "households",
                    "median_income",
                ],
            ),
            ("geo", ClusterSimilarity(n_clusters=5), ["latitude", "longitude"]),
            ("cat", cat_pipeline, make_column_selector(dtype_include=object)),
        ],
        remainder=make_pipeline(SimpleImputer(strategy="median"), StandardScaler()),
    )
    return Pipeline(
        [
            ("preprocessing", preprocessing),
            ("random_forest", RandomForestRegressor(n_estimators=10, random_state=42)),
        ]
    )


def features_of(frame: pd.DataFrame) -> list[tuple[str, str]]:
    return [
        (
            str(name),
            "float64" if pd.api.types.is_numeric_dtype(dtype) else "string",
        )
        for name, dtype in frame.dtypes.items()
    ]


def rows_of(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        {k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()}
        for row in frame.to_dict(orient="records")
    ]


@pytest.fixture(scope="module")
def chapter2() -> tuple[Pipeline, pd.DataFrame]:
    train = housing_frame(ROWS, seed=1)
    pipeline = chapter2_pipeline().fit(train, housing_target(train))
    return pipeline, housing_frame(120, seed=2)


@pytest.fixture(scope="module")
def tabular() -> tuple[Pipeline, pd.DataFrame]:
    """The default ``tabular`` job's shape, with its own ClusterSimilarity."""
    module = import_features_module(FEATURES_SOURCE)
    train = housing_frame(ROWS, seed=3)
    numeric = [c for c in train.columns if c != "ocean_proximity"]
    pipeline = Pipeline(
        [
            (
                "preprocess",
                ColumnTransformer(
                    [
                        (
                            "numeric",
                            make_pipeline(
                                SimpleImputer(strategy="median"), StandardScaler()
                            ),
                            numeric,
                        ),
                        (
                            "categorical",
                            make_pipeline(
                                SimpleImputer(strategy="most_frequent"),
                                OneHotEncoder(
                                    handle_unknown="ignore", sparse_output=False
                                ),
                            ),
                            ["ocean_proximity"],
                        ),
                        (
                            "clusters",
                            make_pipeline(
                                SimpleImputer(strategy="median"),
                                StandardScaler(),
                                module.ClusterSimilarity(
                                    n_clusters=8, gamma=1.0, random_state=42
                                ),
                            ),
                            numeric[:2],
                        ),
                    ]
                ),
            ),
            ("model", RandomForestRegressor(n_estimators=10, random_state=42)),
        ]
    )
    pipeline.fit(train, housing_target(train))
    return pipeline, housing_frame(120, seed=4)


def compiled_of(result: Any) -> CompiledModel:
    return compiled_model(json.loads(result.files[PLAN_FILE]), result.files[MODEL_FILE])


@pytest.mark.parametrize("shape", ["tabular", "chapter2"])
def test_exact_mode_passes_with_identical_answers(
    shape: str, request: pytest.FixtureRequest
) -> None:
    pipeline, held = request.getfixturevalue(shape)
    features = features_of(held)
    result = compile_model(
        pipeline,
        features=features,
        examples=rows_of(held.head(5)),
        heldout=rows_of(held),
    )
    verdict = result.verdict
    assert verdict["status"] == "passed", verdict
    assert verdict["mode"] == "exact"
    assert verdict["max_error"] <= 1e-9
    assert verdict["rows"]["heldout"] == len(held)
    assert verdict["rows"]["thresholds"] > 1000
    columns = columns_from_rows(rows_of(held), features)
    expected = pipeline.predict(pd.DataFrame(columns))
    actual = compiled_of(result).predict(columns)
    np.testing.assert_array_equal(actual, expected)


def test_threshold_rows_sit_on_each_side_of_every_numeric_split(
    tabular: tuple[Pipeline, pd.DataFrame],
) -> None:
    pipeline, held = tabular
    features = features_of(held)
    result = compile_model(
        pipeline, features=features, examples=rows_of(held.head(5)), heldout=[]
    )
    compiled = compiled_of(result)
    base = columns_from_rows(rows_of(held.dropna().head(1)), features)
    forest = pipeline.named_steps["model"]
    splits = sorted(
        {
            (int(f), float(t))
            for tree in forest.estimators_
            for f, t in zip(tree.tree_.feature, tree.tree_.threshold, strict=True)
            if f >= 0
        }
    )
    # The numeric branch's features are 0..7: scaled copies of single columns.
    numeric_splits = [(f, t) for f, t in splits if f < 8]
    rows = threshold_rows(compiled, numeric_splits, base, features)
    # What the trees compare: the features as float32, against float64 thresholds.
    narrowed = compiled.transform(rows).astype(np.float32)
    for feature, threshold in numeric_splits:
        values = narrowed[:, feature].astype(np.float64)
        left, right = values[values <= threshold], values[values > threshold]
        assert len(left) and len(right)
        # the float32 values right at the threshold, on both sides
        assert np.nextafter(np.float32(left.max()), np.float32(np.inf)) == np.float32(
            right.min()
        )


def test_classifier_classes_and_probabilities_match(
    chapter2: tuple[Pipeline, pd.DataFrame],
) -> None:
    train = housing_frame(ROWS, seed=5)
    labels = np.where(housing_target(train) > 250_000, "high", "low")
    pipeline = Pipeline(
        [
            ("preprocessing", chapter2[0].named_steps["preprocessing"]),
            ("forest", RandomForestClassifier(n_estimators=10, random_state=0)),
        ]
    ).fit(train, labels)
    held = housing_frame(80, seed=6)
    features = features_of(held)
    result = compile_model(
        pipeline,
        features=features,
        examples=rows_of(held.head(5)),
        heldout=rows_of(held),
    )
    assert result.verdict["status"] == "passed", result.verdict
    columns = columns_from_rows(rows_of(held), features)
    compiled = compiled_of(result)
    frame = pd.DataFrame(columns)
    np.testing.assert_array_equal(compiled.predict(columns), pipeline.predict(frame))
    proba = compiled.predict_proba(columns)  # type: ignore[attr-defined]
    assert np.abs(proba - pipeline.predict_proba(frame)).max() <= 1e-9


def test_a_step_without_converter_is_refused_and_named(
    chapter2: tuple[Pipeline, pd.DataFrame],
) -> None:
    train = housing_frame(ROWS, seed=7)
    numeric = ["median_income", "latitude"]
    pipeline = Pipeline(
        [
            (
                "prep",
                ColumnTransformer([("poly", PolynomialFeatures(2), numeric)]),
            ),
            ("model", RandomForestRegressor(n_estimators=3, random_state=0)),
        ]
    ).fit(train, housing_target(train))
    held = chapter2[1]
    result = compile_model(
        pipeline,
        features=features_of(held),
        examples=rows_of(held.head(5)),
        heldout=[],
        hybrid=False,
    )
    assert result.verdict["status"] == "refused"
    assert result.verdict["failed_step"] == "prep/poly"
    assert "PolynomialFeatures" in result.verdict["reason"]
    assert result.files == {}


def test_a_wrong_converter_is_caught_by_the_gate(
    chapter2: tuple[Pipeline, pd.DataFrame],
) -> None:
    register_converter("Doubler", lambda *_: {"kind": "identity"})
    train = housing_frame(ROWS, seed=8)
    pipeline = Pipeline(
        [
            ("prep", ColumnTransformer([("double", Doubler(), ["median_income"])])),
            ("model", RandomForestRegressor(n_estimators=3, random_state=0)),
        ]
    ).fit(train, housing_target(train))
    held = chapter2[1]
    result = compile_model(
        pipeline, features=features_of(held), examples=rows_of(held.head(5)), heldout=[]
    )
    assert result.verdict["status"] == "refused"
    assert result.verdict["max_error"] > 1e-9
    assert "exceeds" in result.verdict["reason"]


def test_approximate_mode_records_its_error(
    tabular: tuple[Pipeline, pd.DataFrame],
) -> None:
    pipeline, held = tabular
    arguments: dict[str, Any] = {
        "features": features_of(held),
        "examples": rows_of(held.head(5)),
        "heldout": rows_of(held),
        "mode": "approximate",
    }
    result = compile_model(pipeline, **arguments)
    assert result.verdict["status"] == "passed", result.verdict
    # float32 leaf sums differ from float64 ones, but far less than 1e-4
    assert 0 < result.verdict["max_error"] <= 1e-4
    strict = compile_model(pipeline, tolerance=0.0, **arguments)
    assert strict.verdict["status"] == "refused"
    assert strict.verdict["max_error"] == result.verdict["max_error"]


def test_compiled_model_refuses_what_the_pickle_refuses() -> None:
    train = housing_frame(ROWS, seed=9)
    pipeline = Pipeline(
        [
            (
                "prep",
                ColumnTransformer(
                    [
                        (
                            "cat",
                            OneHotEncoder(handle_unknown="error", sparse_output=False),
                            ["ocean_proximity"],
                        ),
                        ("num", StandardScaler(), ["median_income"]),
                    ]
                ),
            ),
            ("model", RandomForestRegressor(n_estimators=3, random_state=0)),
        ]
    ).fit(train, housing_target(train))
    features = features_of(train)
    result = compile_model(
        pipeline, features=features, examples=rows_of(train.head(5)), heldout=[]
    )
    compiled = compiled_of(result)
    row = rows_of(train.head(1))[0] | {"ocean_proximity": "ISLAND"}
    columns = columns_from_rows([row], features)
    with pytest.raises(ValueError, match="unknown categor"):
        pipeline.predict(pd.DataFrame(columns))
    with pytest.raises(UnknownCategory, match="unknown categor"):
        compiled.predict(columns)
    huge = columns_from_rows(
        [rows_of(train.head(1))[0] | {"median_income": 1e300}], features
    )
    with pytest.raises(ValueError, match="infinity"):
        compiled.predict(huge)


def test_models_without_named_columns_are_not_compiled() -> None:
    rng = np.random.default_rng(0)
    forest = RandomForestRegressor(n_estimators=2).fit(
        rng.normal(size=(50, 3)), rng.normal(size=50)
    )
    result = compile_model(forest, features=[], examples=[], heldout=[])
    assert result.verdict["status"] == "refused"
    assert "named input columns" in result.verdict["reason"]


def test_a_corrupt_plan_does_not_load(tmp_path: Path) -> None:
    (tmp_path / "compiled").mkdir()
    (tmp_path / PLAN_FILE).write_text("{}", encoding="utf-8")
    (tmp_path / MODEL_FILE).write_bytes(b"not onnx")
    with pytest.raises(CompileError):
        CompiledModel.load(tmp_path)
