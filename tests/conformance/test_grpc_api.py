"""TF Serving's gRPC API checked with the official ``tensorflow-serving-api`` stubs.

The expectations come from TF Serving's ``prediction_service.proto``,
``model_service.proto`` and its model-server tests
(``tensorflow_model_server_test.py``), e.g. ``half_plus_two`` answering 3.0 for
x = 2.0 with ``model_spec`` naming the signature that ran. Its errors and the
health service: test_grpc_api_errors.py.
"""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from tests.conformance.conftest import (
    TIMEOUT,
    TWO_VERSIONS,
    expected_metadata,
    rpc_error,
    without_empty_defaults,
)

pytestmark = pytest.mark.integration

testdata = pytest.mark.usefixtures("needs_testdata")

# ---- Predict ----------------------------------------------------------------------


@testdata
@pytest.mark.parametrize("output_filter", [[], ["y"]])
def test_predict(
    prediction: prediction_service_pb2_grpc.PredictionServiceStub,
    output_filter: list[str],
) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([2.0], shape=[1, 1]))
    request.output_filter.extend(output_filter)
    response = prediction.Predict(request, timeout=TIMEOUT)
    assert tf.make_ndarray(response.outputs["y"]).tolist() == [[3.0]]
    assert response.model_spec.name == "half_plus_two"
    assert response.model_spec.version.value == 123
    assert response.model_spec.signature_name == "serving_default"


@testdata
def test_predict_answer_is_readable_without_tensorflow(
    prediction: prediction_service_pb2_grpc.PredictionServiceStub,
) -> None:
    # The book's client without TensorFlow (chapter 19) reads the typed field,
    # which TF Serving fills (Tensor::AsProtoField), not tensor_content.
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([2.0, 4.0], shape=[2, 1]))
    response = prediction.Predict(request, timeout=TIMEOUT)
    output = response.outputs["y"]
    assert list(output.float_val) == [3.0, 4.0]
    assert not output.tensor_content
    assert [dim.size for dim in output.tensor_shape.dim] == [2, 1]
    assert tf.make_ndarray(output).tolist() == [[3.0], [4.0]]


def test_predict_answers_every_dtype_in_its_typed_field(
    prediction: prediction_service_pb2_grpc.PredictionServiceStub,
) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus"
    request.model_spec.signature_name = "echo"
    request.inputs["text"].CopyFrom(tf.make_tensor_proto([b"ab", b"xyz"]))
    response = prediction.Predict(request, timeout=TIMEOUT)
    assert list(response.outputs["text_bytes"].string_val) == [b"ab", b"xyz"]
    length = response.outputs["length"]
    assert not length.tensor_content
    field = {
        tf.int32.as_datatype_enum: "int_val",
        tf.int64.as_datatype_enum: "int64_val",
    }
    assert list(getattr(length, field[length.dtype])) == [2, 3]
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "linear"
    request.inputs["a"].CopyFrom(tf.make_tensor_proto([1.0, 0.0], dtype=tf.float64))
    request.inputs["b"].CopyFrom(tf.make_tensor_proto([2.0, 1.0], dtype=tf.float64))
    predictions = prediction.Predict(request, timeout=TIMEOUT).outputs["predictions"]
    # The pipeline scales and sums in float64: equal to rounding error.
    np.testing.assert_allclose(list(predictions.double_val), [9.0, 4.0])
    assert not predictions.tensor_content


@testdata
def test_predict_on_a_label(
    prediction: prediction_service_pb2_grpc.PredictionServiceStub,
) -> None:
    for label, version in (("stable", 123), ("canary", 124)):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = TWO_VERSIONS
        request.model_spec.version_label = label
        request.inputs["x"].CopyFrom(tf.make_tensor_proto([[1.0]]))
        response = prediction.Predict(request, timeout=TIMEOUT)
        assert response.model_spec.version.value == version
        assert tf.make_ndarray(response.outputs["y"]).tolist() == [[2.5]]


def test_predict_string_tensors(
    prediction: prediction_service_pb2_grpc.PredictionServiceStub,
) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus"
    request.model_spec.signature_name = "echo"
    request.inputs["text"].CopyFrom(tf.make_tensor_proto([b"\x00\x01", b"abc"]))
    response = prediction.Predict(request, timeout=TIMEOUT)
    assert tf.make_ndarray(response.outputs["text_bytes"]).tolist() == [
        b"\x00\x01",
        b"abc",
    ]
    assert tf.make_ndarray(response.outputs["length"]).tolist() == [2, 3]
    assert response.model_spec.signature_name == "echo"


def test_predict_a_message_larger_than_grpcs_default_4_mib(
    prediction: prediction_service_pb2_grpc.PredictionServiceStub,
) -> None:
    values = np.arange(2_000_000, dtype=np.float32)  # 8 MB each way
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(values))
    response = prediction.Predict(request, timeout=TIMEOUT)
    np.testing.assert_allclose(
        tf.make_ndarray(response.outputs["y"]), values * 0.5 + 2.0
    )


def test_predict_on_a_scikit_learn_pipeline(
    prediction: prediction_service_pb2_grpc.PredictionServiceStub,
) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "linear"
    request.inputs["a"].CopyFrom(tf.make_tensor_proto([1.0, 0.0], dtype=tf.float64))
    request.inputs["b"].CopyFrom(tf.make_tensor_proto([2.0, 1.0], dtype=tf.float64))
    response = prediction.Predict(request, timeout=TIMEOUT)
    np.testing.assert_allclose(
        tf.make_ndarray(response.outputs["predictions"]), [9.0, 4.0]
    )


@testdata
def test_stateful_counter_signatures_without_inputs(
    prediction: prediction_service_pb2_grpc.PredictionServiceStub,
) -> None:
    def call(signature: str, **inputs: float) -> float:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "saved_model_counter"
        request.model_spec.signature_name = signature
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value, dtype=tf.float32))
        response = prediction.Predict(request, timeout=TIMEOUT)
        return float(tf.make_ndarray(response.outputs["output"]))

    assert call("reset_counter") == 0.0
    assert call("incr_counter") == 1.0
    assert call("incr_counter") == 2.0
    assert call("incr_counter_by", delta=3.0) == 5.0
    assert call("get_counter") == 5.0


# ---- Classify / Regress / MultiInference ---------------------------------------------


def add_example(request: Any, x: float) -> None:
    """Give a Classification, Regression or MultiInference request one
    tf.Example whose float feature `x` holds `x`."""
    example = request.input.example_list.examples.add()
    example.features.feature["x"].float_list.value.append(x)


@testdata
@pytest.mark.parametrize("model", ["half_plus_two", "half_plus_two_tf2"])
def test_classify(
    prediction: prediction_service_pb2_grpc.PredictionServiceStub, model: str
) -> None:
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = "classify_x_to_y"
    add_example(request, x=2.0)
    response = prediction.Classify(request, timeout=TIMEOUT)
    assert len(response.result.classifications) == 1
    assert len(response.result.classifications[0].classes) == 1
    assert response.result.classifications[0].classes[0].score == 3.0
    assert response.model_spec.name == model
    assert response.model_spec.signature_name == "classify_x_to_y"
    assert response.model_spec.version.value == 123


@testdata
@pytest.mark.parametrize("model", ["half_plus_two", "half_plus_two_tf2"])
def test_regress(
    prediction: prediction_service_pb2_grpc.PredictionServiceStub, model: str
) -> None:
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = "regress_x_to_y"
    add_example(request, x=2.0)
    response = prediction.Regress(request, timeout=TIMEOUT)
    assert [r.value for r in response.result.regressions] == [3.0]
    assert response.model_spec.signature_name == "regress_x_to_y"


@testdata
@pytest.mark.parametrize("model", ["half_plus_two", "half_plus_two_tf2"])
def test_multi_inference(
    prediction: prediction_service_pb2_grpc.PredictionServiceStub, model: str
) -> None:
    request = inference_pb2.MultiInferenceRequest()
    for signature, method in (
        ("regress_x_to_y", "tensorflow/serving/regress"),
        ("classify_x_to_y", "tensorflow/serving/classify"),
    ):
        task = request.tasks.add()
        task.model_spec.name = model
        task.model_spec.signature_name = signature
        task.method_name = method
    add_example(request, x=2.0)
    response = prediction.MultiInference(request, timeout=TIMEOUT)
    assert len(response.results) == 2
    assert response.results[0].regression_result.regressions[0].value == 3.0
    assert (
        response.results[1].classification_result.classifications[0].classes[0].score
        == 3.0
    )
    for result, task in zip(response.results, request.tasks, strict=True):
        assert result.model_spec.name == model
        assert result.model_spec.signature_name == task.model_spec.signature_name
        assert result.model_spec.version.value == 123


@testdata
def test_multi_inference_across_models_is_invalid(
    prediction: prediction_service_pb2_grpc.PredictionServiceStub,
) -> None:
    request = inference_pb2.MultiInferenceRequest()
    for model in ("half_plus_two", "half_plus_two_tf2"):
        task = request.tasks.add()
        task.model_spec.name = model
        task.model_spec.signature_name = "regress_x_to_y"
        task.method_name = "tensorflow/serving/regress"
    add_example(request, x=1.0)
    error = rpc_error(prediction.MultiInference, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "All ModelSpecs in a MultiInferenceRequest must access the same model name."
    )


# ---- GetModelMetadata / GetModelStatus --------------------------------------------------


@testdata
def test_get_model_metadata_matches_tf_serving(
    prediction: prediction_service_pb2_grpc.PredictionServiceStub,
) -> None:
    from tensorflow_serving.apis import get_model_metadata_pb2 as metadata_pb2

    request = metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "half_plus_two"
    request.metadata_field.append("signature_def")
    response = prediction.GetModelMetadata(request, timeout=TIMEOUT)
    assert response.model_spec.name == "half_plus_two"
    assert response.model_spec.version.value == 123
    assert list(response.metadata) == ["signature_def"]
    signature_map = metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_map)
    as_json = json_format.MessageToDict(
        signature_map,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )
    expected = expected_metadata("half_plus_two_model_metadata.json")
    assert without_empty_defaults(as_json["signature_def"]) == without_empty_defaults(
        expected["metadata"]["signature_def"]["signature_def"]
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ([], "GetModelMetadataRequest must specify at least one metadata_field"),
        (["signature_def", "graph"], "Metadata field graph is not supported"),
    ],
)
def test_get_model_metadata_field_validation(
    prediction: prediction_service_pb2_grpc.PredictionServiceStub,
    fields: list[str],
    message: str,
) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "linear"
    request.metadata_field.extend(fields)
    error = rpc_error(prediction.GetModelMetadata, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == message


def test_get_model_status(models: model_service_pb2_grpc.ModelServiceStub) -> None:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "linear"
    response = models.GetModelStatus(request, timeout=TIMEOUT)
    (status,) = response.model_version_status
    assert status.version == 1
    assert status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert status.status.error_code == 0
    assert status.status.error_message == ""


@testdata
@pytest.mark.parametrize(("label", "version"), [("stable", 123), ("canary", 124)])
def test_get_model_status_by_label_answers_the_labelled_version(
    models: model_service_pb2_grpc.ModelServiceStub, label: str, version: int
) -> None:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = TWO_VERSIONS
    request.model_spec.version_label = label
    response = models.GetModelStatus(request, timeout=TIMEOUT)
    (status,) = response.model_version_status
    assert status.version == version
    assert status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE


def test_get_model_status_by_unknown_label_is_invalid_argument(
    models: model_service_pb2_grpc.ModelServiceStub,
) -> None:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "linear"
    request.model_spec.version_label = "nope"
    error = rpc_error(models.GetModelStatus, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "Unrecognized servable version label: nope"


def test_get_model_status_of_unknown_model(
    models: model_service_pb2_grpc.ModelServiceStub,
) -> None:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "no_such_model"
    error = rpc_error(models.GetModelStatus, request)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "Could not find any versions of model no_such_model"


def test_get_model_status_without_model_spec(
    models: model_service_pb2_grpc.ModelServiceStub,
) -> None:
    error = rpc_error(
        models.GetModelStatus, get_model_status_pb2.GetModelStatusRequest()
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "Missing ModelSpec"
