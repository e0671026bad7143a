"""The `tabular` job: a scikit-learn pipeline in the style of Hands-On ML chapter 2.

``ColumnTransformer`` branches:

- numeric columns: median imputation, then standardisation;
- string columns: most-frequent imputation, then one-hot encoding (unknown categories
  at prediction time encode as all zeros instead of failing);
- the first two numeric columns again: imputation, standardisation, then
  ``ClusterSimilarity`` (k-means centres + RBF similarity, our own class).

A random forest (or the chosen estimator) follows. The fitted pipeline is saved with
joblib; ``ClusterSimilarity`` is pickled by reference to the top-level module
``servekit_tabular_features``, which is shipped inside the version folder.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import joblib
import numpy as np
import pandas as pd
from modelregistry import Draft, Registry
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
)
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from training.datasets import (
    TabularDataset,
    TaskChoice,
    TaskName,
    load_tabular_dataset,
)
from training.errors import DatasetError, TrainingError
from training.progress import job_steps
from training.published import PublishedModel, to_json_value

EstimatorName = Literal["random-forest", "linear", "gradient-boosting"]
ESTIMATORS: tuple[EstimatorName, ...] = ("random-forest", "linear", "gradient-boosting")

FEATURES_MODULE = "servekit_tabular_features"
FEATURES_SOURCE = Path(__file__).with_name(f"{FEATURES_MODULE}.py")
CODE_DIR = "code"
ARTIFACT = "model.joblib"
EXAMPLE_COUNT = 5
TEST_FRACTION = 0.2
CLUSTER_COUNT = 8

STEPS = ("copy code", "fit pipeline", "evaluate", "save model")
HELDOUT_FILE = "heldout.json"
HELDOUT_LIMIT = 2000
Finish = Callable[[Draft, Any, list[dict[str, Any]]], None]
"""Called in the publish block with the draft, the fitted pipeline and the
held-out rows, before the manifest is written (the CLI compiles there)."""


@dataclass(frozen=True)
class TabularOptions:
    """What `servekit train tabular` can be asked for."""

    name: str = "tabular"
    version: int | None = None
    seed: int = 42
    csv: Path | None = None
    target: str | None = None
    task: TaskChoice = "auto"
    estimator: EstimatorName = "random-forest"


def import_features_module(path: Path) -> ModuleType:
    """Import ``path`` as the top-level module ``servekit_tabular_features``.

    Importing the copy that ships with the version (rather than
    ``training.servekit_tabular_features``) gives its classes the ``__module__`` that
    pickles must reference so the serving side can load them from the version folder.
    A fresh module each time: a copy from an earlier run may be a different file.
    """
    spec = importlib.util.spec_from_file_location(FEATURES_MODULE, path)
    if spec is None or spec.loader is None:
        raise TrainingError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[FEATURES_MODULE] = module
    spec.loader.exec_module(module)
    return module


def build_pipeline(
    dataset: TabularDataset,
    features: ModuleType,
    estimator: EstimatorName,
    seed: int,
) -> Pipeline:
    """The unfitted pipeline for a dataset's columns and task."""
    numeric = dataset.numeric_features
    categorical = dataset.categorical_features
    branches: list[tuple[str, Any, list[str]]] = []
    if numeric:
        branches.append(
            (
                "numeric",
                Pipeline(
                    [
                        ("impute", SimpleImputer(strategy="median")),
                        ("scale", StandardScaler()),
                    ]
                ),
                numeric,
            )
        )
    if categorical:
        branches.append(
            (
                "categorical",
                Pipeline(
                    [
                        ("impute", SimpleImputer(strategy="most_frequent")),
                        (
                            "one_hot",
                            OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                        ),
                    ]
                ),
                categorical,
            )
        )
    if len(numeric) >= 2:
        branches.append(
            (
                "clusters",
                Pipeline(
                    [
                        ("impute", SimpleImputer(strategy="median")),
                        ("scale", StandardScaler()),
                        (
                            "similarity",
                            features.ClusterSimilarity(
                                n_clusters=CLUSTER_COUNT, gamma=1.0, random_state=seed
                            ),
                        ),
                    ]
                ),
                numeric[:2],
            )
        )
    preprocess = ColumnTransformer(branches, remainder="drop")
    return Pipeline(
        [
            ("preprocess", preprocess),
            ("model", make_estimator(dataset.task, estimator, seed)),
        ]
    )


def make_estimator(task: TaskName, estimator: EstimatorName, seed: int) -> Any:
    """The final step; a random forest of 50 trees is the reference."""
    if task == "regression":
        if estimator == "linear":
            return Ridge(alpha=1.0, random_state=seed)
        if estimator == "gradient-boosting":
            return HistGradientBoostingRegressor(random_state=seed)
        return RandomForestRegressor(n_estimators=50, random_state=seed)
    if estimator == "linear":
        return LogisticRegression(max_iter=1000, random_state=seed)
    if estimator == "gradient-boosting":
        return HistGradientBoostingClassifier(random_state=seed)
    return RandomForestClassifier(n_estimators=50, random_state=seed)


def split_dataset(
    dataset: TabularDataset, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series, pd.Series]:
    """Held-out split; classes stay balanced when every class has two rows."""
    features = dataset.frame[dataset.features]
    target = dataset.frame[dataset.target]
    stratify = None
    if dataset.task == "classification" and int(target.value_counts().min()) >= 2:
        stratify = target
    x_train, x_test, y_train, y_test = train_test_split(
        features, target, test_size=TEST_FRACTION, random_state=seed, stratify=stratify
    )
    return x_train, x_test, y_train, y_test


def evaluate(
    pipeline: Pipeline, task: TaskName, x_test: pd.DataFrame, y_test: pd.Series
) -> dict[str, float]:
    """Held-out metrics: rmse/mae/r2 for regression, accuracy/f1_macro otherwise."""
    predicted = pipeline.predict(x_test)
    if task == "regression":
        return {
            "rmse": float(np.sqrt(mean_squared_error(y_test, predicted))),
            "mae": float(mean_absolute_error(y_test, predicted)),
            "r2": float(r2_score(y_test, predicted)),
        }
    return {
        "accuracy": float(accuracy_score(y_test, predicted)),
        "f1_macro": float(f1_score(y_test, predicted, average="macro")),
    }


def heldout_rows(
    x_test: pd.DataFrame, limit: int = HELDOUT_LIMIT
) -> list[dict[str, Any]]:
    """Held-out rows as JSON objects (missing values as null), for the parity gate."""
    return [
        {str(column): to_json_value(value) for column, value in row.items()}
        for _, row in x_test.head(limit).iterrows()
    ]


def example_rows(
    x_test: pd.DataFrame, count: int = EXAMPLE_COUNT
) -> list[dict[str, Any]]:
    """A few held-out rows as JSON objects, preferring rows without missing values.

    Examples double as warm-up and load-test payloads, where complete rows are the
    common case; missing values (if no complete row exists) become null.
    """
    complete = x_test[x_test.notna().all(axis=1)]
    chosen = complete if len(complete) >= count else x_test
    return [
        {str(column): to_json_value(value) for column, value in row.items()}
        for _, row in chosen.head(count).iterrows()
    ]


def signatures_for(
    dataset: TabularDataset, classes: list[str] | None
) -> dict[str, Any]:
    """Manifest signatures: one input per column, `predictions` out; classifiers
    also get `predict_proba` with `probabilities` in the order of ``classes``."""
    inputs = {
        feature["name"]: {"dtype": feature["dtype"], "shape": [-1]}
        for feature in dataset.feature_dtypes()
    }
    prediction_dtype = "float64" if dataset.task == "regression" else "string"
    signatures: dict[str, Any] = {
        "serving_default": {
            "method": "predict",
            "inputs": inputs,
            "outputs": {"predictions": {"dtype": prediction_dtype, "shape": [-1]}},
        }
    }
    if classes is not None:
        signatures["predict_proba"] = {
            "method": "predict",
            "inputs": inputs,
            "outputs": {
                "probabilities": {"dtype": "float64", "shape": [-1, len(classes)]}
            },
        }
    return signatures


def train_tabular(
    registry: Registry,
    options: TabularOptions,
    show_progress: bool = True,
    dataset: TabularDataset | None = None,
    finish: Finish | None = None,
) -> PublishedModel:
    """Train the pipeline, evaluate it on held-out rows and publish it.

    The data is read before anything is written, so a bad CSV leaves the registry as
    it was; a failure later removes the draft (the registry's publish block does).
    ``dataset`` is the data ``options`` describe, when the caller has loaded it already.
    The held-out rows are stored as ``heldout.json``; ``finish`` runs last in the
    publish block (see :data:`Finish`).

    Raises:
        DatasetError: the data cannot be used.
        modelregistry.RegistryError: the registry refused the version.
    """
    if dataset is None:
        dataset = load_tabular_dataset(options.csv, options.target, options.task)
    # The registry is checked (writable, version free) before any progress is shown,
    # so refusals print as a single line.
    with (
        registry.publish(
            options.name, framework="sklearn", version=options.version
        ) as draft,
        job_steps(
            f"tabular ({options.estimator})",
            STEPS + (("compile",) if finish is not None else ()),
            show_progress,
        ) as steps,
    ):
        steps.start("copy code")
        code_dir = draft.path / CODE_DIR
        code_dir.mkdir()
        shipped = code_dir / FEATURES_SOURCE.name
        shutil.copyfile(FEATURES_SOURCE, shipped)
        features_module = import_features_module(shipped)

        steps.start("fit pipeline")
        x_train, x_test, y_train, y_test = split_dataset(dataset, options.seed)
        pipeline = build_pipeline(
            dataset, features_module, options.estimator, options.seed
        )
        try:
            pipeline.fit(x_train, y_train)
        except ValueError as exc:
            raise DatasetError(f"cannot fit on {dataset.source}: {exc}") from exc

        steps.start("evaluate")
        metrics = evaluate(pipeline, dataset.task, x_test, y_test)
        classes = (
            [str(label) for label in pipeline.classes_]
            if dataset.task == "classification"
            else None
        )

        steps.start("save model")
        joblib.dump(pipeline, draft.path / ARTIFACT)
        held = heldout_rows(x_test)
        (draft.path / HELDOUT_FILE).write_text(
            json.dumps(held, allow_nan=False) + "\n", encoding="utf-8"
        )
        draft.manifest.update(
            artifact=ARTIFACT,
            code_dir=CODE_DIR,
            task=dataset.task,
            classes=classes,
            # Every column goes through an imputer (build_pipeline), so every
            # feature takes a missing value.
            features=[
                {**feature, "nullable": True} for feature in dataset.feature_dtypes()
            ],
            signatures=signatures_for(dataset, classes),
            examples=example_rows(x_test),
            metrics=metrics,
            data_fingerprint=dataset.fingerprint(),
        )
        if finish is not None:
            steps.start("compile")
            finish(draft, pipeline, held)
        steps.finish()
    if draft.version is None:
        raise TrainingError(f"publishing {options.name} returned no version")
    return PublishedModel(
        name=options.name,
        version=draft.version,
        path=registry.version_dir(options.name, draft.version),
        framework="sklearn",
        task=dataset.task,
        metrics=metrics,
    )
