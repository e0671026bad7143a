"""The scikit-learn runtime on real published pipelines."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from modelregistry import read_manifest
from modelserver.errors import (
    IntegrityFailure,
    InvalidInput,
    LoadError,
    PredictSignatureNotFound,
    SignatureNotFound,
)
from modelserver.registry.repository import LoadOptions, load_runtime
from modelserver.runtimes.frames import to_bytes_array, to_text_array
from modelserver.runtimes.sklearn import SklearnRuntime
from modelserver.types import PREDICT_METHOD, TensorInfo

CLASSES = ["large", "small"]


def load(path: Path) -> SklearnRuntime:
    return SklearnRuntime.load(
        name="model", version=1, path=path, manifest=read_manifest(path)
    )


def test_signatures_mirror_the_manifest(sklearn_classifier_version: Path) -> None:
    runtime = load(sklearn_classifier_version)
    assert set(runtime.signatures) == {"serving_default", "predict_proba"}
    default = runtime.signatures["serving_default"]
    assert default.method_name == PREDICT_METHOD
    assert default.inputs["size"] == TensorInfo("size", "DT_DOUBLE", (-1,))
    assert default.inputs["color"] == TensorInfo("color", "DT_STRING", (-1,))
    assert default.outputs["predictions"] == TensorInfo(
        "predictions", "DT_STRING", (-1,)
    )
    proba = runtime.signatures["predict_proba"]
    assert proba.outputs["probabilities"].shape == (-1, 2)


def test_predict_builds_the_frame_with_manifest_dtypes(
    sklearn_classifier_version: Path,
) -> None:
    runtime = load(sklearn_classifier_version)
    # Numbers arrive as strings and colours as bytes: both are converted.
    call = runtime.prepare_predict(
        "",
        {
            "size": np.array([b"3.0", b"-3.0"], dtype=object),
            "color": np.array([b"red", b"blue"], dtype=object),
        },
        (),
    )
    assert call.batch_size == 2
    assert call.inputs["size"].dtype == np.float64
    outputs = runtime.run(call)
    assert outputs["predictions"].tolist() == [b"large", b"small"]


class _Recorder:
    """Wraps an estimator and keeps the frames it was given."""

    def __init__(self, estimator: Any) -> None:
        self.estimator = estimator
        self.frames: list[pd.DataFrame] = []

    def predict(self, frame: pd.DataFrame) -> Any:
        self.frames.append(frame.copy())
        return self.estimator.predict(frame)


@pytest.mark.parametrize("rows", [1, 3])
def test_the_estimator_gets_the_manifest_columns_in_order_and_dtype(
    sklearn_classifier_version: Path, rows: int
) -> None:
    runtime = load(sklearn_classifier_version)
    recorder = _Recorder(runtime.estimator)
    runtime.estimator = recorder
    # Sent in the opposite order to the manifest's, as JSON objects may be.
    call = runtime.prepare_predict(
        "",
        {
            "color": np.array(["red", "blue", "red"][:rows], dtype=object),
            "size": np.array([3, -3, 1][:rows], dtype=np.int64),
        },
        (),
    )
    runtime.run(call)
    (frame,) = recorder.frames
    assert list(frame.columns) == ["size", "color"]
    assert frame.dtypes.tolist() == [np.dtype(np.float64), np.dtype(object)]
    assert frame.index.tolist() == list(range(rows))
    assert frame["size"].tolist() == [3.0, -3.0, 1.0][:rows]
    assert frame["color"].tolist() == ["red", "blue", "red"][:rows]


def test_predict_proba_signature(sklearn_classifier_version: Path) -> None:
    runtime = load(sklearn_classifier_version)
    call = runtime.prepare_predict(
        "predict_proba",
        {"size": np.array([3.0]), "color": np.array(["red"], dtype=object)},
        (),
    )
    probabilities = runtime.run(call)["probabilities"]
    assert probabilities.shape == (1, 2)
    assert probabilities[0, 0] > 0.5
    np.testing.assert_allclose(probabilities.sum(axis=1), [1.0])


def test_classify_answers_every_class_with_its_probability(
    sklearn_classifier_version: Path,
) -> None:
    runtime = load(sklearn_classifier_version)
    call = runtime.prepare_classify(
        "",
        [{"size": [3.0]}, {"size": [-3.0], "color": [b"red"]}],
        {"color": [b"blue"]},
    )
    results = runtime.to_classifications(call, runtime.run(call)).pairs()
    assert [[label for label, _ in row] for row in results] == [CLASSES, CLASSES]
    assert results[0][0][1] > 0.5
    assert results[1][1][1] > 0.5
    assert sum(score for _, score in results[0]) == pytest.approx(1.0, abs=1e-6)


def test_regress_on_a_regressor(sklearn_linear_version: Path) -> None:
    runtime = load(sklearn_linear_version)
    call = runtime.prepare_regress(
        "", [{"a": [1.0], "b": [1.0]}, {"a": [0], "b": [2]}], None
    )
    values = runtime.to_regressions(call, runtime.run(call))
    assert values.tolist() == pytest.approx([6.0, 7.0])


def test_classify_on_a_regressor_is_refused(sklearn_linear_version: Path) -> None:
    runtime = load(sklearn_linear_version)
    with pytest.raises(InvalidInput, match="at least one"):
        runtime.prepare_classify("", [{"a": [1.0], "b": [1.0]}], None)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"a": np.array([1.0])}, "Missing but required: {b}"),
        (
            {"a": np.array([1.0]), "b": np.array([1.0]), "c": np.array([1.0])},
            "Sent extra: {c}",
        ),
        ({"a": np.array([1.0]), "z": np.array([1.0])}, "alias not found"),
        ({"a": np.array([[1.0, 2.0]]), "b": np.array([1.0])}, "shape"),
        ({"a": np.array([1.0, 2.0]), "b": np.array([1.0])}, "rows"),
        ({"a": np.array(["x"], dtype=object), "b": np.array([1.0])}, "float64"),
    ],
)
def test_bad_inputs_are_invalid(
    sklearn_linear_version: Path, inputs: dict[str, np.ndarray], message: str
) -> None:
    runtime = load(sklearn_linear_version)
    with pytest.raises(InvalidInput, match=message):
        runtime.prepare_predict("", inputs, ())


def test_unknown_signatures_and_outputs(sklearn_linear_version: Path) -> None:
    runtime = load(sklearn_linear_version)
    with pytest.raises(PredictSignatureNotFound, match='"nope" not found'):
        runtime.prepare_predict("nope", {}, ())
    with pytest.raises(SignatureNotFound, match="No signature was found"):
        runtime.prepare_regress("nope", [{"a": [1.0]}], None)
    with pytest.raises(InvalidInput, match="output tensor alias not found"):
        runtime.prepare_predict(
            "", {"a": np.array([1.0]), "b": np.array([1.0])}, ("y",)
        )


def test_examples_missing_a_feature_are_invalid(sklearn_linear_version: Path) -> None:
    runtime = load(sklearn_linear_version)
    with pytest.raises(InvalidInput, match="no feature b"):
        runtime.prepare_regress("", [{"a": [1.0]}], None)
    with pytest.raises(InvalidInput, match="Input is empty"):
        runtime.prepare_regress("", [], None)


def test_unknown_category_values_still_predict(
    sklearn_classifier_version: Path,
) -> None:
    runtime = load(sklearn_classifier_version)
    call = runtime.prepare_predict(
        "", {"size": np.array([0.0]), "color": np.array(["green"], dtype=object)}, ()
    )
    assert runtime.run(call)["predictions"].shape == (1,)


def test_tampered_pickle_is_refused(
    sklearn_linear_version: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "1"
    shutil.copytree(sklearn_linear_version, copy)
    with (copy / "model.joblib").open("ab") as handle:
        handle.write(b"tampered")
    with pytest.raises(IntegrityFailure, match="sha256"):
        load(copy)


def test_pickle_without_manifest_is_refused(
    sklearn_linear_version: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "1"
    shutil.copytree(sklearn_linear_version, copy)
    (copy / "servekit.json").unlink()
    with pytest.raises(LoadError, match=r"no servekit\.json manifest"):
        load_runtime(
            name="m", version=1, path=copy, platform="sklearn", options=LoadOptions()
        )


def test_manifest_framework_picks_the_runtime(
    sklearn_linear_version: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "1"
    shutil.copytree(sklearn_linear_version, copy)
    # The config says tensorflow; the manifest knows better.
    runtime = load_runtime(
        name="m", version=1, path=copy, platform="tensorflow", options=LoadOptions()
    )
    assert isinstance(runtime, SklearnRuntime)
    manifest = json.loads((copy / "servekit.json").read_text())
    manifest["framework"] = "pytorch"
    (copy / "servekit.json").write_text(json.dumps(manifest))
    with pytest.raises(LoadError, match="invalid manifest"):
        load_runtime(
            name="m", version=1, path=copy, platform="sklearn", options=LoadOptions()
        )


def test_warmup_replays_the_manifest_examples(
    sklearn_classifier_version: Path,
) -> None:
    from modelserver.registry.warmup import warm_up

    runtime = load(sklearn_classifier_version)
    # Two signatures x (the two rows together + each row alone).
    assert warm_up(runtime) == 6
    assert warm_up(runtime, iterations=2) == 12


def test_plain_estimator_takes_one_feature_matrix(tmp_path: Path) -> None:
    import joblib
    from modelregistry import Registry
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(5)
    features = rng.normal(size=(60, 3))
    labels = (features[:, 0] > 0).astype(np.int64)
    estimator = LogisticRegression().fit(features, labels)
    registry = Registry(tmp_path)
    with registry.publish("matrix", framework="sklearn") as draft:
        joblib.dump(estimator, draft.path / "model.joblib")
        draft.manifest.update(
            artifact="model.joblib",
            task="classification",
            signatures={
                "serving_default": {
                    "method": "predict",
                    "inputs": {"inputs": {"dtype": "float64", "shape": [-1, 3]}},
                    "outputs": {"predictions": {"dtype": "int64", "shape": [-1]}},
                },
            },
            examples=[{"inputs": [0.1, 0.2, 0.3]}],
        )
    assert draft.version is not None
    runtime = load(tmp_path / "matrix" / str(draft.version))
    rows = np.array([[3.0, 0.0, 0.0], [-3, 0, 0]], dtype=np.int32)
    outputs = runtime.run(runtime.prepare_predict("", {"inputs": rows}, ()))
    assert outputs["predictions"].tolist() == [1, 0]
    assert outputs["predictions"].dtype == np.int64
    with pytest.raises(InvalidInput, match=r"expected shape \[-1, 3\]"):
        runtime.prepare_predict("", {"inputs": np.zeros((1, 4))}, ())
    with pytest.raises(InvalidInput, match="named features"):
        runtime.prepare_regress("", [{"inputs": [1.0]}], None)


def test_text_columns_become_str_objects_whatever_they_arrive_as() -> None:
    cases = [
        (np.array([b"caf\xc3\xa9", b"\xff"], dtype=object), ["café", "\ufffd"]),
        (np.array([b"a", b"bc"]), ["a", "bc"]),
        (np.array(["u", "v"]), ["u", "v"]),
        (np.array([b"x", "y", 3], dtype=object), ["x", "y", "3"]),
    ]
    for value, expected in cases:
        text = to_text_array(value)
        assert text.dtype == object
        assert text.tolist() == expected
    matrix = to_text_array(np.array([[b"a"], [b"b"]], dtype=object))
    assert matrix.shape == (2, 1)
    assert matrix.tolist() == [["a"], ["b"]]


def test_string_outputs_become_utf8_bytes() -> None:
    assert to_bytes_array(np.array(["é", "b"])).tolist() == [b"\xc3\xa9", b"b"]
    assert to_bytes_array(np.array(["x", 1], dtype=object)).tolist() == [b"x", b"1"]
    assert to_bytes_array(np.array([0.1], dtype=np.float32)).tolist() == [b"0.1"]
