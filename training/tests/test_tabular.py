"""The tabular job: what it publishes, how it loads, and that it is reproducible."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from modelregistry import IntegrityError, Registry, load_pickle, read_manifest
from training.datasets import TaskName, load_diabetes_dataset
from training.published import PublishedModel
from training.tabular import (
    EstimatorName,
    TabularOptions,
    make_estimator,
    train_tabular,
)

EXPECTED_FEATURES = [
    ("bmi", "float64"),
    ("bp", "float64"),
    ("age", "int64"),
    ("sex", "int64"),
    ("s1", "float64"),
    ("s2", "float64"),
    ("s3", "float64"),
    ("s4", "float64"),
    ("s5", "float64"),
    ("s6", "float64"),
    ("bmi_class", "string"),
]


def test_manifest_describes_the_pipeline(tabular_model: PublishedModel) -> None:
    manifest = read_manifest(tabular_model.path)
    assert manifest.framework == "sklearn"
    assert manifest.artifact == "model.joblib"
    assert manifest.code_dir == "code"
    assert manifest.task == "regression"
    assert manifest.classes is None
    assert [(f.name, f.dtype) for f in manifest.features] == EXPECTED_FEATURES
    # Every column is imputed, so typed endpoints take null for each.
    assert all(feature.nullable for feature in manifest.features)
    assert set(manifest.signatures) == {"serving_default"}
    default = manifest.signatures["serving_default"]
    assert default.method == "predict"
    assert list(default.inputs) == [name for name, _ in EXPECTED_FEATURES]
    assert {name: spec.dtype for name, spec in default.inputs.items()} == dict(
        EXPECTED_FEATURES
    )
    assert all(spec.shape == [-1] for spec in default.inputs.values())
    assert default.outputs["predictions"].dtype == "float64"
    assert default.outputs["predictions"].shape == [-1]
    assert {"model.joblib", "code/servekit_tabular_features.py"} <= set(manifest.files)
    registry = Registry(tabular_model.path.parent.parent)
    assert registry.verify(tabular_model.name, tabular_model.version) == []


def test_metrics_are_held_out_and_sensible(tabular_model: PublishedModel) -> None:
    metrics = read_manifest(tabular_model.path).metrics
    assert metrics == tabular_model.metrics
    assert set(metrics) == {"rmse", "mae", "r2"}
    target_spread = float(load_diabetes_dataset().frame["progression"].std())
    # Better than predicting the mean, by a margin a broken pipeline would miss.
    assert metrics["r2"] > 0.25
    assert metrics["rmse"] < 0.9 * target_spread
    assert 0 < metrics["mae"] < metrics["rmse"]


def test_data_fingerprint_is_the_csv_bytes_of_the_frame(
    tabular_model: PublishedModel,
) -> None:
    frame = load_diabetes_dataset().frame
    expected = hashlib.sha256(
        frame.to_csv(index=False, lineterminator="\n").encode()
    ).hexdigest()
    fingerprint = read_manifest(tabular_model.path).data_fingerprint
    assert fingerprint is not None
    assert fingerprint.sha256 == expected
    assert fingerprint.rows == 442
    assert fingerprint.columns == [name for name, _ in EXPECTED_FEATURES] + [
        "progression"
    ]


def test_default_data_has_missing_values_and_a_category() -> None:
    frame = load_diabetes_dataset().frame
    assert frame["bmi"].isna().sum() > 0
    assert frame["s5"].isna().sum() > 0
    assert frame["bmi_class"].isna().sum() > 0
    assert set(frame["bmi_class"].dropna()) == {
        "underweight",
        "normal",
        "overweight",
        "obese",
    }


def test_examples_are_complete_json_rows_that_predict(
    tabular_model: PublishedModel,
) -> None:
    examples = read_manifest(tabular_model.path).examples
    assert len(examples) == 5
    for row in examples:
        assert list(row) == [name for name, _ in EXPECTED_FEATURES]
        assert all(value is not None for value in row.values())
        assert isinstance(row["age"], int)
        assert isinstance(row["bmi_class"], str)
    pipeline = load_pickle(tabular_model.path, read_manifest(tabular_model.path))
    predictions = pipeline.predict(pd.DataFrame(examples))
    assert predictions.shape == (5,)
    assert np.all((predictions > 20) & (predictions < 350))


def test_custom_transformer_loads_from_the_version_folder(
    tabular_model: PublishedModel,
) -> None:
    pipeline = load_pickle(tabular_model.path, read_manifest(tabular_model.path))
    similarity = pipeline.named_steps["preprocess"].named_transformers_["clusters"][-1]
    assert type(similarity).__module__ == "servekit_tabular_features"
    module_file = Path(sys.modules["servekit_tabular_features"].__file__ or "")
    assert module_file.parent == tabular_model.path / "code"
    names = pipeline[:-1].get_feature_names_out()
    assert [n for n in names if n.startswith("clusters__")] == [
        f"clusters__cluster_{i}_similarity" for i in range(8)
    ]


def test_pickle_needs_only_the_version_folder(tabular_model: PublishedModel) -> None:
    # A fresh interpreter where the training package cannot be imported at all.
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["training"] = None
        from pathlib import Path
        import pandas as pd
        from modelregistry import load_pickle, read_manifest
        folder = Path({str(tabular_model.path)!r})
        manifest = read_manifest(folder)
        pipeline = load_pickle(folder, manifest)
        print(len(pipeline.predict(pd.DataFrame(manifest.examples))))
        """
    )
    completed = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "5"


def test_changed_custom_code_is_refused(
    tabular_model: PublishedModel, tmp_path: Path
) -> None:
    copy = tmp_path / "1"
    shutil.copytree(tabular_model.path, copy)
    with (copy / "code" / "servekit_tabular_features.py").open("a") as handle:
        handle.write("\nimport os  # injected\n")
    with pytest.raises(IntegrityError, match="servekit_tabular_features"):
        load_pickle(copy, read_manifest(copy))


def test_unseen_category_and_missing_values_still_predict(
    tabular_model: PublishedModel,
) -> None:
    pipeline = load_pickle(tabular_model.path, read_manifest(tabular_model.path))
    rows = pd.DataFrame(read_manifest(tabular_model.path).examples[:2])
    rows["bmi_class"] = pd.Series(["never-seen", None], dtype=object)
    rows["bmi"] = [np.nan, np.nan]
    predictions = pipeline.predict(rows)
    assert np.all(np.isfinite(predictions))


def test_same_seed_same_predictions(
    tmp_path: Path, tabular_model: PublishedModel
) -> None:
    registry = Registry(tmp_path / "registry")
    first = train_tabular(registry, TabularOptions(seed=7), show_progress=False)
    second = train_tabular(registry, TabularOptions(seed=7), show_progress=False)
    assert (first.version, second.version) == (1, 2)
    assert first.metrics == second.metrics
    assert (
        registry.manifest("tabular", 1).examples
        == registry.manifest("tabular", 2).examples
    )

    frame = load_diabetes_dataset().frame.drop(columns="progression")

    def predict(folder: Path) -> np.ndarray:
        pipeline = load_pickle(folder, read_manifest(folder))
        predictions: np.ndarray = pipeline.predict(frame)
        return predictions

    np.testing.assert_array_equal(predict(first.path), predict(second.path))
    # The session's model used seed 42: the seed must reach the model.
    assert not np.array_equal(predict(first.path), predict(tabular_model.path))


@pytest.mark.parametrize(
    ("task", "estimator", "expected"),
    [
        ("regression", "random-forest", "RandomForestRegressor"),
        ("regression", "linear", "Ridge"),
        ("regression", "gradient-boosting", "HistGradientBoostingRegressor"),
        ("classification", "random-forest", "RandomForestClassifier"),
        ("classification", "linear", "LogisticRegression"),
        ("classification", "gradient-boosting", "HistGradientBoostingClassifier"),
    ],
)
def test_estimator_choice(
    task: TaskName, estimator: EstimatorName, expected: str
) -> None:
    chosen = make_estimator(task, estimator, seed=5)
    assert type(chosen).__name__ == expected
    if "random_state" in chosen.get_params():
        assert chosen.get_params()["random_state"] == 5


def test_linear_estimator_publishes(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry")
    published = train_tabular(
        registry,
        TabularOptions(name="tabular-linear", estimator="linear"),
        show_progress=False,
    )
    assert published.metrics["r2"] > 0.2
    assert registry.verify(published.name, published.version) == []


def make_classification_csv(path: Path, rows: int = 400) -> None:
    """Rows whose label depends on a float, an int and a text column."""
    rng = np.random.default_rng(3)
    width = rng.normal(size=rows)
    height = rng.normal(size=rows)
    count = rng.integers(0, 10, size=rows)
    colour = rng.choice(["red", "green", "blue"], size=rows)
    score = width + 0.3 * count + np.where(colour == "red", 2.0, 0.0)
    label = np.where(score > 2.5, "high", np.where(score > 0.5, "mid", "low"))
    frame = pd.DataFrame(
        {
            "width": width,
            "height": height,
            "count": count,
            "colour": colour,
            "outdoor": rng.choice([True, False], size=rows),
            "label": label,
        }
    )
    frame.loc[::19, "height"] = np.nan
    frame.loc[::23, "colour"] = None
    frame.to_csv(path, index=False)


def test_csv_classification(tmp_path: Path) -> None:
    csv = tmp_path / "shapes.csv"
    make_classification_csv(csv)
    registry = Registry(tmp_path / "registry")
    published = train_tabular(
        registry,
        TabularOptions(name="shapes", csv=csv, target="label"),
        show_progress=False,
    )
    manifest = registry.manifest("shapes", published.version)
    assert manifest.task == "classification"
    assert manifest.classes == ["high", "low", "mid"]
    assert [(f.name, f.dtype) for f in manifest.features] == [
        ("width", "float64"),
        ("height", "float64"),
        ("count", "int64"),
        ("colour", "string"),
        ("outdoor", "string"),
    ]
    assert set(manifest.metrics) == {"accuracy", "f1_macro"}
    assert manifest.metrics["accuracy"] > 0.75
    assert manifest.signatures["serving_default"].outputs["predictions"].dtype == (
        "string"
    )
    proba = manifest.signatures["predict_proba"]
    assert proba.outputs["probabilities"].dtype == "float64"
    assert proba.outputs["probabilities"].shape == [-1, 3]
    assert manifest.data_fingerprint is not None
    assert manifest.data_fingerprint.rows == 400

    pipeline = load_pickle(published.path, manifest)
    examples = pd.DataFrame(manifest.examples)
    assert set(pipeline.predict(examples)) <= set(manifest.classes)
    probabilities = pipeline.predict_proba(examples)
    assert probabilities.shape == (5, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    assert list(pipeline.classes_) == manifest.classes
