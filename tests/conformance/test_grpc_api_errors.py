"""TF Serving's gRPC API errors (unknown models, versions and signatures, bad
requests, the request id in trailers) and the gRPC health service, checked with
the official ``tensorflow-serving-api`` stubs.
"""

from __future__ import annotations

import grpc
import pytest
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tests.conformance.conftest import (
    TIMEOUT,
    rpc_error,
)

pytestmark = pytest.mark.integration


# ---- errors -----------------------------------------------------------------------------


def test_unknown_model_is_not_found(
    prediction: prediction_service_pb2_grpc.PredictionServiceStub,
) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "no_such_model"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0]))
    error = rpc_error(prediction.Predict, request)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "Servable not found for request: Latest(no_such_model)"


def test_unknown_version_is_not_found(
    prediction: prediction_service_pb2_grpc.PredictionServiceStub,
) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus"
    request.model_spec.version.value = 9
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0]))
    error = rpc_error(prediction.Predict, request)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "Servable not found for request: Specific(half_plus, 9)"


def test_empty_model_name_is_invalid(
    prediction: prediction_service_pb2_grpc.PredictionServiceStub,
) -> None:
    request = predict_pb2.PredictRequest()
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0]))
    error = rpc_error(prediction.Predict, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "ModelSpec has no name specified."


@pytest.mark.parametrize(
    ("signature", "inputs"),
    [
        ("", {"wrong_name": [1.0]}),
        ("", {"x": ["not", "floats"]}),
        ("", {}),
    ],
)
def test_bad_predict_requests_are_invalid_argument(
    prediction: prediction_service_pb2_grpc.PredictionServiceStub,
    signature: str,
    inputs: dict[str, list[object]],
) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus"
    request.model_spec.signature_name = signature
    for key, values in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(values))
    error = rpc_error(prediction.Predict, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details()


def test_unknown_signature_is_failed_precondition(
    prediction: prediction_service_pb2_grpc.PredictionServiceStub,
) -> None:
    # TF Serving's predict_util.cc (REST checks the signature earlier: 400).
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus"
    request.model_spec.signature_name = "nope"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0]))
    error = rpc_error(prediction.Predict, request)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == 'Serving signature key "nope" not found.'


def test_request_id_in_trailing_metadata(
    prediction: prediction_service_pb2_grpc.PredictionServiceStub,
) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0]))
    _, call = prediction.Predict.with_call(
        request, timeout=TIMEOUT, metadata=(("x-request-id", "grpc-conformance"),)
    )
    assert ("x-request-id", "grpc-conformance") in tuple(call.trailing_metadata())


# ---- health ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "service",
    [
        "",
        "tensorflow.serving.PredictionService",
        "tensorflow.serving.ModelService",
        "PredictionService",
        "ModelService",
    ],
)
def test_health_reports_serving(channel: grpc.Channel, service: str) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_health_of_an_unknown_service_is_not_found(channel: grpc.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    error = rpc_error(stub.Check, health_pb2.HealthCheckRequest(service="nope"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
