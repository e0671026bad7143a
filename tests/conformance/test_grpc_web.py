"""gRPC-Web on the REST port, checked against the gRPC port of the same server.

Requests are built with the official ``tensorflow-serving-api`` classes, framed as
gRPC-Web (``grpc/grpc doc/PROTOCOL-WEB.md``) by hand, sent with httpx over
HTTP/1.1; every answer must equal what the gRPC port answers to the same call:
the same message, or the same status code and message.
"""

from __future__ import annotations

import base64
import gzip
import struct
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tests.conformance.test_rest_api import METRICS_PATH
from tests.support.metrics import sample_sum
from tests.support.modelserver import ModelServer

pytestmark = pytest.mark.integration

PREDICT = "/tensorflow.serving.PredictionService/Predict"
BINARY = "application/grpc-web+proto"
TIMEOUT = 30.0


@pytest.fixture(scope="module")
def stubs(
    conformance_server: ModelServer,
) -> Iterator[
    tuple[
        prediction_service_pb2_grpc.PredictionServiceStub,
        model_service_pb2_grpc.ModelServiceStub,
    ]
]:
    with grpc.insecure_channel(conformance_server.grpc_target) as channel:
        yield (
            prediction_service_pb2_grpc.PredictionServiceStub(channel),
            model_service_pb2_grpc.ModelServiceStub(channel),
        )


def framed(message: bytes, flag: int = 0) -> bytes:
    return struct.pack(">BI", flag, len(message)) + message


def frames(body: bytes) -> list[tuple[int, bytes]]:
    found = []
    while body:
        flag, length = struct.unpack(">BI", body[:5])
        found.append((flag, body[5 : 5 + length]))
        body = body[5 + length :]
    return found


def call(
    rest: httpx.Client,
    path: str,
    body: bytes,
    content_type: str = BINARY,
    **headers: str,
) -> tuple[bytes | None, dict[str, str], httpx.Response]:
    """POST one framed message; the answer's message (or None) and its status."""
    response = rest.post(
        path, content=body, headers={"content-type": content_type, **headers}
    )
    assert response.status_code == 200, response.text
    raw = response.content
    if content_type.startswith("application/grpc-web-text"):
        raw = base64.b64decode(raw)
    status = {
        key: response.headers[key]
        for key in ("grpc-status", "grpc-message")
        if key in response.headers
    }
    message = None
    for flag, payload in frames(raw):
        if flag & 0x80:
            for line in payload.decode().split("\r\n"):
                key, _, value = line.partition(":")
                if key:
                    status[key.strip()] = value.strip()
        else:
            message = payload
    return message, status, response


def ok_message(rest: httpx.Client, path: str, request: Any) -> bytes:
    """The answer's message to a call that must succeed."""
    message, status, _ = call(rest, path, framed(request.SerializeToString()))
    assert status["grpc-status"] == "0", status
    assert message is not None
    return message


def half_plus_request(values: list[float]) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(values, dtype=tf.float32))
    return request


def grpc_error(method: Any, request: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        method(request, timeout=TIMEOUT)
    return caught.value


def test_predict_answers_as_the_grpc_port(rest: httpx.Client, stubs: Any) -> None:
    prediction, _ = stubs
    request = half_plus_request([1.0, 2.0, 5.0])
    message, status, response = call(
        rest, PREDICT, framed(request.SerializeToString()), **{"x-request-id": "w-1"}
    )
    assert status["grpc-status"] == "0"
    assert response.headers["content-type"] == BINARY
    assert response.headers["x-request-id"] == "w-1"
    assert message is not None
    answer = predict_pb2.PredictResponse.FromString(message)
    assert answer == prediction.Predict(request, timeout=TIMEOUT)
    assert tf.make_ndarray(answer.outputs["y"]).tolist() == [2.5, 3.0, 4.5]
    # TF Serving's typed field, as on the gRPC port.
    assert list(answer.outputs["y"].float_val) == [2.5, 3.0, 4.5]
    assert answer.model_spec.version.value == 1


def test_a_scikit_learn_pipeline(rest: httpx.Client) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "linear"
    request.inputs["a"].CopyFrom(tf.make_tensor_proto([1.0, 0.0], dtype=tf.float64))
    request.inputs["b"].CopyFrom(tf.make_tensor_proto([2.0, 1.0], dtype=tf.float64))
    message, status, _ = call(rest, PREDICT, framed(request.SerializeToString()))
    assert status["grpc-status"] == "0", status
    assert message is not None
    answer = predict_pb2.PredictResponse.FromString(message)
    np.testing.assert_allclose(
        tf.make_ndarray(answer.outputs["predictions"]), [9.0, 4.0]
    )


def test_text_mode_and_a_gzip_body(rest: httpx.Client) -> None:
    request = half_plus_request([4.0])
    body = base64.b64encode(framed(request.SerializeToString()))
    message, status, response = call(
        rest,
        PREDICT,
        gzip.compress(body),
        "application/grpc-web-text",
        **{"content-encoding": "gzip"},
    )
    assert status["grpc-status"] == "0"
    assert response.headers["content-type"] == "application/grpc-web-text+proto"
    assert message is not None
    answer = predict_pb2.PredictResponse.FromString(message)
    assert tf.make_ndarray(answer.outputs["y"]).tolist() == [4.0]


@pytest.mark.parametrize(
    ("change", "expected_code"),
    [
        (lambda r: r.model_spec.__setattr__("name", "no_such_model"), "NOT_FOUND"),
        (lambda r: r.model_spec.version.__setattr__("value", 9), "NOT_FOUND"),
        (
            lambda r: r.model_spec.__setattr__("version_label", "nope"),
            "INVALID_ARGUMENT",
        ),
        (
            lambda r: r.model_spec.__setattr__("signature_name", "missing"),
            "FAILED_PRECONDITION",
        ),
        (lambda r: r.inputs["wrong"].CopyFrom(r.inputs["x"]), "INVALID_ARGUMENT"),
    ],
)
def test_errors_are_the_grpc_ports(
    rest: httpx.Client, stubs: Any, change: Any, expected_code: str
) -> None:
    prediction, _ = stubs
    request = half_plus_request([1.0])
    change(request)
    expected = grpc_error(prediction.Predict, request)
    assert expected.code().name == expected_code
    message, status, _ = call(rest, PREDICT, framed(request.SerializeToString()))
    assert message is None
    assert int(status["grpc-status"]) == expected.code().value[0]
    assert status["grpc-message"] == _percent_encoded(expected.details())


def _percent_encoded(text: str) -> str:
    return "".join(
        chr(byte) if 0x20 <= byte <= 0x7E and byte != 0x25 else f"%{byte:02X}"
        for byte in text.encode()
    )


def test_metadata_and_status_answer_as_the_grpc_port(
    rest: httpx.Client, stubs: Any
) -> None:
    prediction, models = stubs
    metadata_request = get_model_metadata_pb2.GetModelMetadataRequest()
    metadata_request.model_spec.name = "half_plus"
    metadata_request.metadata_field.append("signature_def")
    message = ok_message(
        rest, "/tensorflow.serving.PredictionService/GetModelMetadata", metadata_request
    )
    assert get_model_metadata_pb2.GetModelMetadataResponse.FromString(
        message
    ) == prediction.GetModelMetadata(metadata_request, timeout=TIMEOUT)

    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = "linear"
    message = ok_message(
        rest, "/tensorflow.serving.ModelService/GetModelStatus", status_request
    )
    answer = get_model_status_pb2.GetModelStatusResponse.FromString(message)
    assert answer == models.GetModelStatus(status_request, timeout=TIMEOUT)
    assert answer.model_version_status[0].state == 30  # AVAILABLE


@pytest.mark.parametrize(
    ("path", "body", "code"),
    [
        ("/tensorflow.serving.PredictionService/Nope", framed(b""), "12"),
        (PREDICT, framed(b"\xff\xff\xff"), "13"),  # not a PredictRequest
        (PREDICT, b"\x00\x00\x00\x00\x09ab", "3"),  # frame cut short
        (PREDICT, framed(b"") + framed(b""), "3"),  # two messages in a unary call
        (PREDICT, framed(b"x", flag=1), "3"),  # compressed, none negotiated
    ],
)
def test_malformed_calls_get_a_grpc_status(
    rest: httpx.Client, path: str, body: bytes, code: str
) -> None:
    message, status, _ = call(rest, path, body)
    assert message is None
    assert status["grpc-status"] == code, status


def test_an_expired_deadline_is_deadline_exceeded(rest: httpx.Client) -> None:
    request = half_plus_request([1.0])
    _, status, _ = call(
        rest, PREDICT, framed(request.SerializeToString()), **{"grpc-timeout": "0n"}
    )
    assert status["grpc-status"] == str(grpc.StatusCode.DEADLINE_EXCEEDED.value[0])


def test_a_malformed_timeout_is_invalid_argument(rest: httpx.Client) -> None:
    request = half_plus_request([1.0])
    _, status, _ = call(
        rest, PREDICT, framed(request.SerializeToString()), **{"grpc-timeout": "5x"}
    )
    assert status["grpc-status"] == "3"
    assert "grpc-timeout" in status["grpc-message"]


def test_another_content_type_is_415(rest: httpx.Client) -> None:
    response = rest.post(PREDICT, content=b"{}", headers={"content-type": "text/json"})
    assert response.status_code == 415
    assert "application/grpc-web" in response.json()["error"]


def test_calls_are_counted_as_grpc_web(rest: httpx.Client) -> None:
    def counted() -> float:
        text = rest.get(METRICS_PATH).text
        return sample_sum(
            text,
            "modelserver_request_count_total",
            model="half_plus",
            protocol="grpc-web",
            status="OK",
        )

    before = counted()
    request = half_plus_request([1.0])
    for _ in range(3):
        call(rest, PREDICT, framed(request.SerializeToString()))
    assert counted() == before + 3
