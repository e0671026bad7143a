"""The digits job: SavedModel signatures, TF Serving warm-up records, the manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from modelregistry import Registry, read_manifest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from training.published import PublishedModel

tf = pytest.importorskip("tensorflow")
prediction_log_pb2 = pytest.importorskip("tensorflow_serving.apis.prediction_log_pb2")
saved_model_pb2 = pytest.importorskip("tensorflow.core.protobuf.saved_model_pb2")

CLASS_NAMES = [str(digit) for digit in range(10)]


@pytest.fixture(scope="module")
def loaded(digits_model: PublishedModel) -> Any:
    return tf.saved_model.load(str(digits_model.path))


@pytest.fixture(scope="module")
def held_out() -> tuple[np.ndarray, np.ndarray]:
    bunch = load_digits()
    # The job's split: 20 % held out, stratified, seed 42.
    _, x_test, _, y_test = train_test_split(
        bunch.data.astype(np.float32),
        bunch.target,
        test_size=0.2,
        random_state=42,
        stratify=bunch.target,
    )
    return x_test, y_test


def to_examples(rows: np.ndarray) -> list[bytes]:
    return [
        tf.train.Example(
            features=tf.train.Features(
                feature={
                    "pixels": tf.train.Feature(
                        float_list=tf.train.FloatList(value=row.tolist())
                    )
                }
            )
        ).SerializeToString()
        for row in rows
    ]


def test_manifest(digits_model: PublishedModel) -> None:
    manifest = read_manifest(digits_model.path)
    assert manifest.framework == "tensorflow"
    assert manifest.artifact == "saved_model.pb"
    assert manifest.task == "classification"
    assert manifest.classes == CLASS_NAMES
    assert set(manifest.metrics) == {"accuracy", "loss"}
    assert manifest.metrics == digits_model.metrics
    # Two epochs only; a broken model or export stays near 0.1.
    assert manifest.metrics["accuracy"] > 0.6
    assert len(manifest.examples) == 3
    assert all(list(row) == ["pixels"] for row in manifest.examples)
    assert all(len(row["pixels"]) == 64 for row in manifest.examples)
    assert manifest.data_fingerprint is not None
    assert manifest.data_fingerprint.rows == 1797
    assert len(manifest.data_fingerprint.columns) == 65
    assert {
        "saved_model.pb",
        "assets.extra/tf_serving_warmup_requests",
        "variables/variables.index",
    } <= set(manifest.files)
    assert manifest.libraries["tensorflow"] == tf.__version__
    registry = Registry(digits_model.path.parent.parent)
    assert registry.verify(digits_model.name, digits_model.version) == []


def test_manifest_signatures_mirror_the_saved_model(
    digits_model: PublishedModel,
) -> None:
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((digits_model.path / "saved_model.pb").read_bytes())
    defs = saved_model.meta_graphs[0].signature_def
    assert defs["serving_default"].method_name == "tensorflow/serving/predict"
    assert defs["classify"].method_name == "tensorflow/serving/classify"

    signatures = read_manifest(digits_model.path).signatures
    assert set(signatures) == {"serving_default", "classify"}
    expected = {
        "serving_default": (
            "predict",
            {"pixels": ("float32", [-1, 64])},
            {"probabilities": ("float32", [-1, 10]), "class_id": ("int64", [-1])},
        ),
        "classify": (
            "classify",
            {"inputs": ("string", [-1])},
            {"classes": ("string", [-1, 10]), "scores": ("float32", [-1, 10])},
        ),
    }
    for key, (method, inputs, outputs) in expected.items():
        signature = signatures[key]
        assert signature.method == method
        assert {n: (s.dtype, s.shape) for n, s in signature.inputs.items()} == inputs
        assert {n: (s.dtype, s.shape) for n, s in signature.outputs.items()} == outputs
        for name, spec in {**signature.inputs, **signature.outputs}.items():
            info = (
                defs[key].inputs[name]
                if name in defs[key].inputs
                else defs[key].outputs[name]
            )
            assert tf.dtypes.as_dtype(info.dtype).name == spec.dtype
            assert [dim.size for dim in info.tensor_shape.dim] == spec.shape


def test_serving_default_predicts_held_out_digits(
    loaded: Any, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    x_test, y_test = held_out
    outputs = loaded.signatures["serving_default"](pixels=tf.constant(x_test))
    probabilities = outputs["probabilities"].numpy()
    class_id = outputs["class_id"].numpy()
    assert probabilities.shape == (len(x_test), 10)
    assert class_id.shape == (len(x_test),)
    assert class_id.dtype == np.int64
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(class_id, probabilities.argmax(axis=1))
    assert float(np.mean(class_id == y_test)) > 0.6


def test_classify_matches_serving_default(
    loaded: Any, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    rows = held_out[0][:7]
    classified = loaded.signatures["classify"](inputs=tf.constant(to_examples(rows)))
    predicted = loaded.signatures["serving_default"](pixels=tf.constant(rows))
    assert classified["classes"].shape == (7, 10)
    assert classified["classes"].dtype == tf.string
    for row in classified["classes"].numpy():
        assert [label.decode() for label in row] == CLASS_NAMES
    np.testing.assert_allclose(
        classified["scores"].numpy(), predicted["probabilities"].numpy(), rtol=1e-5
    )


def test_manifest_examples_are_held_out_rows(
    digits_model: PublishedModel, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    examples = np.asarray(
        [row["pixels"] for row in read_manifest(digits_model.path).examples],
        dtype=np.float32,
    )
    np.testing.assert_array_equal(examples, held_out[0][:3])


def read_warmup(path: Path) -> list[Any]:
    return [
        prediction_log_pb2.PredictionLog.FromString(record.numpy())
        for record in tf.data.TFRecordDataset(str(path))
    ]


def test_warmup_records_are_prediction_logs_that_replay(
    digits_model: PublishedModel, loaded: Any
) -> None:
    logs = read_warmup(
        digits_model.path / "assets.extra" / "tf_serving_warmup_requests"
    )
    kinds = [log.WhichOneof("log_type") for log in logs]
    assert kinds.count("predict_log") >= 1
    assert kinds.count("classify_log") == 1
    for log in logs:
        if log.HasField("predict_log"):
            request = log.predict_log.request
            assert request.model_spec.name == "digits"
            assert request.model_spec.signature_name == "serving_default"
            pixels = tf.make_ndarray(request.inputs["pixels"])
            assert pixels.dtype == np.float32
            assert pixels.shape[1:] == (64,)
            outputs = loaded.signatures["serving_default"](pixels=tf.constant(pixels))
            assert outputs["probabilities"].shape == (pixels.shape[0], 10)
        else:
            request = log.classify_log.request
            assert request.model_spec.signature_name == "classify"
            examples = list(request.input.example_list.examples)
            assert len(examples) == 3
            assert all(
                len(example.features.feature["pixels"].float_list.value) == 64
                for example in examples
            )
            outputs = loaded.signatures["classify"](
                inputs=tf.constant([e.SerializeToString() for e in examples])
            )
            assert outputs["scores"].shape == (3, 10)


def test_fingerprint_matches_the_rewritten_proto(digits_model: PublishedModel) -> None:
    # The classify method name is set after saving; a fresh fingerprint of the
    # final saved_model.pb must equal the one on disk.
    from tensorflow.core.protobuf import fingerprint_pb2
    from tensorflow.python.saved_model.pywrap_saved_model import (
        fingerprinting as fingerprinting_pywrap,
    )

    on_disk = fingerprint_pb2.FingerprintDef.FromString(
        (digits_model.path / "fingerprint.pb").read_bytes()
    )
    recomputed = fingerprint_pb2.FingerprintDef.FromString(
        fingerprinting_pywrap.CreateFingerprintDef(str(digits_model.path))
    )
    assert on_disk.saved_model_checksum == recomputed.saved_model_checksum
    assert on_disk.signature_def_hash == recomputed.signature_def_hash
    fingerprint = tf.saved_model.experimental.read_fingerprint(str(digits_model.path))
    assert fingerprint.saved_model_checksum == on_disk.saved_model_checksum


def test_loads_in_a_tf1_session_like_tf_serving(
    digits_model: PublishedModel, loaded: Any, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    # TF Serving's C++ loader restores a SavedModel into a session from the
    # MetaGraphDef (not through tf.saved_model.load's object graph); both
    # signatures must run that way too, with the same results.
    rows = held_out[0][:4]
    with tf.compat.v1.Session(graph=tf.Graph()) as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(
            session, ["serve"], str(digits_model.path)
        )
        default = meta_graph.signature_def["serving_default"]
        probabilities = session.run(
            default.outputs["probabilities"].name,
            {default.inputs["pixels"].name: rows},
        )
        classify = meta_graph.signature_def["classify"]
        classes, scores = session.run(
            [classify.outputs["classes"].name, classify.outputs["scores"].name],
            {classify.inputs["inputs"].name: to_examples(rows)},
        )
    eager = loaded.signatures["serving_default"](pixels=tf.constant(rows))
    np.testing.assert_allclose(probabilities, eager["probabilities"].numpy(), rtol=1e-5)
    np.testing.assert_allclose(scores, probabilities, rtol=1e-5)
    assert [label.decode() for label in classes[0]] == CLASS_NAMES
