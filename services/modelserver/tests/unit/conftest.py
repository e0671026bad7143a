"""Tiny real models for the model server's unit tests, built once per session.

- ``tf_saved_model``: a TF2 SavedModel ``y = 0.5 x + 2`` with signatures
  ``serving_default`` (x float [-1] -> y), ``regress`` and ``classify`` (tf.Example
  strings -> outputs / classes + scores), ``echo`` (strings) and ``row_sum``
  (variable-length rows), plus a warmup file of two predict records.
- ``sklearn_classifier_version``: a published scikit-learn pipeline (scaler +
  one-hot + logistic regression) over a numeric and a string column with
  ``predict`` and ``predict_proba`` signatures.
- ``sklearn_linear_version``: ``y = 2 a + 3 b + 1`` (tests.support.models);
  ``linear_folder`` installs versions of it under the test's own folder.

Tests copy these version folders into their own registry folders.
``start_dataplane`` starts DataPlanes on a config file (stopped after the test);
``two_models`` is a registry with `linear` (versions 1 and 2, `stable` on 1) and
`classifier` (version 3).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from modelserver.dataplane import DataPlane
from modelserver.observability.metrics import Metrics
from modelserver.settings import Settings

from tests.support.models import (
    TFSERVING_TESTDATA,
    VersionFolder,
    install_version_copy,
    publish_linear_pipeline,
)

WARMUP_RECORDS = 2
CLASSES = ["large", "small"]


@pytest.fixture(scope="session")
def tf_saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A version folder holding the test SavedModel (TensorFlow imported here)."""
    import tensorflow as tf
    from servekit_protocol import messages, tensors

    class HalfPlusTwo(tf.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.slope = tf.Variable(0.5, dtype=tf.float32)
            self.offset = tf.Variable(2.0, dtype=tf.float32)

        def _parse(self, serialized: Any) -> Any:
            parsed = tf.io.parse_example(
                serialized, {"x": tf.io.FixedLenFeature([1], tf.float32)}
            )
            return parsed["x"]

        @tf.function(  # type: ignore[untyped-decorator]
            input_signature=[tf.TensorSpec([None], tf.float32, name="x")]
        )
        def predict(self, x: Any) -> dict[str, Any]:
            return {"y": self.slope * x + self.offset}

        @tf.function(  # type: ignore[untyped-decorator]
            input_signature=[tf.TensorSpec([None], tf.string, name="inputs")]
        )
        def regress(self, serialized: Any) -> dict[str, Any]:
            return {"outputs": self.slope * self._parse(serialized) + self.offset}

        @tf.function(  # type: ignore[untyped-decorator]
            input_signature=[tf.TensorSpec([None], tf.string, name="inputs")]
        )
        def classify(self, serialized: Any) -> dict[str, Any]:
            x = self._parse(serialized)
            large = tf.sigmoid(x)
            scores = tf.concat([large, 1.0 - large], axis=1)
            classes = tf.tile(tf.constant([CLASSES]), [tf.shape(x)[0], 1])
            return {"scores": scores, "classes": classes}

        @tf.function(  # type: ignore[untyped-decorator]
            input_signature=[tf.TensorSpec([None], tf.string, name="text")]
        )
        def echo(self, text: Any) -> dict[str, Any]:
            return {"text": text, "length": tf.strings.length(text)}

        @tf.function(  # type: ignore[untyped-decorator]
            input_signature=[tf.TensorSpec([None, None], tf.float32, name="rows")]
        )
        def row_sum(self, rows: Any) -> dict[str, Any]:
            return {"total": tf.reduce_sum(rows, axis=1)}

    module = HalfPlusTwo()
    path = tmp_path_factory.mktemp("tf") / "1"
    tf.saved_model.save(
        module,
        str(path),
        signatures={
            "serving_default": module.predict,
            "regress": module.regress,
            "classify": module.classify,
            "echo": module.echo,
            "row_sum": module.row_sum,
        },
    )
    warmup = path / "assets.extra" / "tf_serving_warmup_requests"
    warmup.parent.mkdir(parents=True)
    with tf.io.TFRecordWriter(str(warmup)) as writer:
        for value in range(WARMUP_RECORDS):
            log = messages.PredictionLog()
            request = log.predict_log.request
            request.model_spec.name = "half_plus_two"
            request.inputs["x"].CopyFrom(
                tensors.from_ndarray(np.array([float(value)], dtype=np.float32))
            )
            writer.write(log.SerializeToString())
    return path


def _publish_classifier(root: Path) -> int:
    import joblib
    import pandas as pd
    from modelregistry import Registry
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    rng = np.random.default_rng(3)
    size = rng.normal(size=200)
    color = rng.choice(["red", "blue"], size=200)
    frame = pd.DataFrame({"size": size, "color": color})
    labels = np.where(size + (color == "red") * 0.5 > 0.2, "large", "small")
    pipeline = Pipeline(
        [
            (
                "prepare",
                ColumnTransformer(
                    [
                        ("numeric", StandardScaler(), ["size"]),
                        ("category", OneHotEncoder(handle_unknown="ignore"), ["color"]),
                    ]
                ),
            ),
            ("model", LogisticRegression()),
        ]
    ).fit(frame, labels)
    inputs = {
        "size": {"dtype": "float64", "shape": [-1]},
        "color": {"dtype": "string", "shape": [-1]},
    }
    registry = Registry(root)
    with registry.publish("classifier", framework="sklearn") as draft:
        joblib.dump(pipeline, draft.path / "model.joblib")
        draft.manifest.update(
            artifact="model.joblib",
            task="classification",
            classes=CLASSES,
            features=[
                {"name": "size", "dtype": "float64"},
                {"name": "color", "dtype": "string"},
            ],
            signatures={
                "serving_default": {
                    "method": "predict",
                    "inputs": inputs,
                    "outputs": {"predictions": {"dtype": "string", "shape": [-1]}},
                },
                "predict_proba": {
                    "method": "predict",
                    "inputs": inputs,
                    "outputs": {
                        "probabilities": {"dtype": "float64", "shape": [-1, 2]}
                    },
                },
            },
            examples=[{"size": 1.5, "color": "red"}, {"size": -2.0, "color": "blue"}],
        )
    assert draft.version is not None
    return draft.version


@pytest.fixture(scope="session")
def sklearn_classifier_version(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The version folder of the published classifier pipeline."""
    root = tmp_path_factory.mktemp("classifier-registry")
    version = _publish_classifier(root)
    return root / "classifier" / str(version)


@pytest.fixture(scope="session")
def sklearn_linear_version(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The version folder of ``y = 2 a + 3 b + 1``."""
    root = tmp_path_factory.mktemp("linear-registry")
    version = publish_linear_pipeline(root, "linear", offset=1.0)
    return root / "linear" / str(version)


@pytest.fixture
def metrics() -> Metrics:
    """Fresh metrics on their own CollectorRegistry."""
    return Metrics()


@pytest.fixture
def tfserving_models() -> Path:
    """TF Serving's own test SavedModels (skipped when the shared folder is absent)."""
    models = TFSERVING_TESTDATA / "models"
    if not models.is_dir():
        pytest.skip("../shared/tfserving-testdata is absent")
    return models


def _settings_for(config_file: Path, **overrides: Any) -> Settings:
    """Settings for a dataplane on ``config_file`` with quick failure reporting."""
    values: dict[str, Any] = {
        "model_config_file": str(config_file),
        "max_num_load_retries": 0,
        "file_system_poll_wait_seconds": 0,
        "inference_threads": 2,
        # pytest's own filters (warnings are errors) stay in force.
        "own_warning_filters": False,
    }
    values.update(overrides)
    return Settings(**values)


def _write_config(path: Path, *blocks: str) -> Path:
    """Write a ModelServerConfig text proto with the given ``config { ... }`` bodies."""
    body = "\n".join(f"  config {{ {block} }}" for block in blocks)
    path.write_text(f"model_config_list {{\n{body}\n}}\n")
    return path


@pytest.fixture
def install_version() -> Any:
    """``install_version(source, base_path, version) -> Path``."""
    return install_version_copy


@pytest.fixture
def linear_folder(tmp_path: Path, sklearn_linear_version: Path) -> VersionFolder:
    """``<tmp_path>/linear``, where the test installs versions of ``linear``."""
    return VersionFolder(tmp_path / "linear", sklearn_linear_version)


@pytest.fixture
def settings_for() -> Any:
    """``settings_for(config_file, **overrides) -> Settings``."""
    return _settings_for


@pytest.fixture
def write_config() -> Any:
    """``write_config(path, *config_blocks) -> Path``."""
    return _write_config


@pytest.fixture
async def start_dataplane(
    metrics: Metrics, settings_for: Any
) -> AsyncIterator[Callable[..., Awaitable[DataPlane]]]:
    started: list[DataPlane] = []

    async def start(config_file: Path, **overrides: Any) -> DataPlane:
        settings: Settings = settings_for(config_file, **overrides)
        dataplane = DataPlane.from_settings(settings, metrics)
        await dataplane.start()
        started.append(dataplane)
        return dataplane

    yield start
    for dataplane in started:
        if dataplane.live():
            await dataplane.stop()


@pytest.fixture
def two_models(
    tmp_path: Path,
    sklearn_linear_version: Path,
    sklearn_classifier_version: Path,
    install_version: Any,
    write_config: Any,
) -> Path:
    install_version(sklearn_linear_version, tmp_path / "linear", 1)
    install_version(sklearn_linear_version, tmp_path / "linear", 2)
    install_version(sklearn_classifier_version, tmp_path / "classifier", 3)
    return write_config(  # type: ignore[no-any-return]
        tmp_path / "servekit.config",
        'name: "linear" base_path: "linear" model_platform: "sklearn" '
        "model_version_policy { all {} } "
        'version_labels { key: "stable" value: 1 }',
        'name: "classifier" base_path: "classifier" model_platform: "sklearn"',
    )
