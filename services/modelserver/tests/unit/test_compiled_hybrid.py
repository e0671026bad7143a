"""Hybrid plans: steps without a converter run in Python, under the same gate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from modelserver.compiled import MODEL_FILE, PLAN_FILE, CompileError, compile_model
from modelserver.compiled.hybrid import find_step, locate
from modelserver.compiled.model import CompiledModel
from modelserver.compiled.parity import columns_from_rows
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import (
    FunctionTransformer,
    OneHotEncoder,
    PolynomialFeatures,
    StandardScaler,
)

FEATURES = [("size", "float64"), ("rooms", "float64"), ("region", "string")]


def clipped_square(values: Any) -> Any:
    """A user's function no converter knows."""
    return np.clip(values, 0.0, 150.0) ** 2


def frame(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    data = pd.DataFrame(
        {
            "size": rng.uniform(20, 200, rows),
            "rooms": rng.integers(1, 8, rows).astype(np.float64),
            "region": rng.choice(["north", "south", "east"], rows).astype(object),
        }
    )
    data.loc[data.index[::17], "rooms"] = np.nan
    return data


def target(data: pd.DataFrame) -> Any:
    return 3.0 * data["size"] + (data["region"] == "north") * 50.0


def rows_of(data: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        {k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()}
        for row in data.to_dict(orient="records")
    ]


def hybrid_pipeline(final: Any) -> Pipeline:
    prep = ColumnTransformer(
        [
            ("size", FunctionTransformer(clipped_square), ["size"]),
            (
                "rooms",
                make_pipeline(SimpleImputer(strategy="median"), PolynomialFeatures(2)),
                ["rooms"],
            ),
            ("region", OneHotEncoder(handle_unknown="ignore"), ["region"]),
        ]
    )
    return Pipeline([("prep", prep), ("scale", StandardScaler()), ("model", final)])


@pytest.fixture(scope="module")
def regressor() -> Pipeline:
    train = frame(400, seed=1)
    final = RandomForestRegressor(n_estimators=8, random_state=0)
    return hybrid_pipeline(final).fit(train, target(train))


def test_unconverted_steps_run_in_python_and_the_rest_compiles(
    regressor: Pipeline,
) -> None:
    held = frame(150, seed=2)
    result = compile_model(
        regressor,
        features=FEATURES,
        examples=rows_of(held.head(5)),
        heldout=rows_of(held),
    )
    verdict = result.verdict
    assert verdict["status"] == "passed", verdict
    assert verdict["max_error"] <= 1e-9
    assert verdict["python_steps"] == ["prep/size", "prep/rooms/polynomialfeatures"]
    plan = json.loads(result.files[PLAN_FILE])
    branches = {
        b["name"]: b["step"] for b in plan["preprocess"]["steps"][0]["branches"]
    }
    assert branches["size"]["kind"] == "python"
    assert "clipped_square" in branches["size"]["reason"]
    assert branches["rooms"]["steps"][0]["kind"] == "impute"
    assert branches["region"]["kind"] == "one_hot"
    assert plan["preprocess"]["steps"][1]["kind"] == "scale"


def test_a_hybrid_plan_loads_with_the_pickle_and_answers_as_it(
    regressor: Pipeline, tmp_path: Path
) -> None:
    held = frame(150, seed=3)
    result = compile_model(
        regressor, features=FEATURES, examples=rows_of(held.head(5)), heldout=[]
    )
    for relative, content in result.files.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(content)
    assert CompiledModel.needs_pickle(tmp_path)
    with pytest.raises(CompileError, match="in Python: no pickle"):
        CompiledModel.load(tmp_path)
    compiled = CompiledModel.load(
        tmp_path, lambda location: find_step(regressor, location)
    )
    columns = columns_from_rows(rows_of(held), FEATURES)
    expected = regressor.predict(held)
    np.testing.assert_array_equal(compiled.predict(columns), expected)


def test_a_classifier_with_a_python_step_keeps_classes_and_probabilities() -> None:
    train = frame(400, seed=4)
    labels = np.where(target(train) > 300, "large", "small")
    final = RandomForestClassifier(n_estimators=8, random_state=0)
    pipeline = hybrid_pipeline(final).fit(train, labels)
    held = frame(150, seed=5)
    result = compile_model(
        pipeline, features=FEATURES, examples=rows_of(held.head(5)), heldout=[]
    )
    assert result.verdict["status"] == "passed", result.verdict
    compiled = CompiledModel(
        json.loads(result.files[PLAN_FILE]),
        result.files[MODEL_FILE],
        lambda location: find_step(pipeline, location),
    )
    columns = columns_from_rows(rows_of(held), FEATURES)
    np.testing.assert_array_equal(compiled.predict(columns), pipeline.predict(held))
    np.testing.assert_allclose(
        compiled.scores(columns), pipeline.predict_proba(held), rtol=0, atol=1e-12
    )


def test_the_gate_still_refuses_a_python_step_that_answers_otherwise() -> None:
    calls = {"count": 0}

    def drifting(values: Any) -> Any:
        # Each call shifts its answer: the compiled model's call never equals
        # the pickle's.
        calls["count"] += 1
        return np.asarray(values, dtype=np.float64) + calls["count"]

    train = frame(300, seed=6)
    pipeline = Pipeline(
        [
            (
                "prep",
                ColumnTransformer(
                    [
                        ("size", FunctionTransformer(drifting), ["size"]),
                        ("region", OneHotEncoder(), ["region"]),
                    ]
                ),
            ),
            ("model", RandomForestRegressor(n_estimators=4, random_state=0)),
        ]
    ).fit(train, target(train))
    held = frame(60, seed=7)
    result = compile_model(
        pipeline, features=FEATURES, examples=rows_of(held.head(5)), heldout=[]
    )
    assert result.verdict["status"] == "refused"
    assert result.verdict["python_steps"] == ["prep/size"]
    assert "exceeds" in result.verdict["reason"]
    assert result.files == {}


def test_steps_are_found_by_their_names(regressor: Pipeline) -> None:
    inner = regressor.named_steps["prep"].named_transformers_["rooms"]
    poly = inner.named_steps["polynomialfeatures"]
    location = locate(regressor, poly)
    assert location == ["prep", "rooms", "polynomialfeatures"]
    assert find_step(regressor, location) is poly
    with pytest.raises(CompileError, match="no step prep/missing"):
        find_step(regressor, ["prep", "missing"])
