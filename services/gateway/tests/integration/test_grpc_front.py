"""gRPC through the gateway: TF Serving's own client, routing, auth, request ids."""

from __future__ import annotations

import grpc
import httpx
import numpy as np
import pytest
from servekit_protocol import grpcweb, messages
from servekit_protocol.services import ModelServiceStub, PredictionServiceStub
from servekit_protocol.tensors import from_ndarray

from tests.support.gateway import ApiKeys, GatewayProcess
from tests.support.models import linear_target

pytestmark = pytest.mark.integration


def linear_request(
    model: str = "linear", version: int | None = None
) -> messages.PredictRequest:
    request = messages.PredictRequest()
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    from_ndarray(np.array([1.0, 2.0]), into=request.inputs["a"])
    from_ndarray(np.array([0.5, -1.0]), into=request.inputs["b"])
    return request


def test_predict_status_metadata_and_request_id(
    gateway: GatewayProcess, api_keys: ApiKeys
) -> None:
    metadata = [("x-api-key", api_keys.admin), ("x-request-id", "grpc-id-42")]
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        predictions = PredictionServiceStub(channel)
        response, call = predictions.Predict.with_call(
            linear_request(version=2), timeout=10, metadata=metadata
        )
        # TF Serving's encoding: the values in the typed field a client
        # without TensorFlow reads.
        predicted = response.outputs["predictions"]
        assert not predicted.tensor_content
        np.testing.assert_allclose(
            list(predicted.double_val),
            [linear_target(1, 0.5, 5), linear_target(2, -1, 5)],
        )
        assert ("x-request-id", "grpc-id-42") in [
            (item.key, item.value) for item in call.trailing_metadata()
        ]
        request = messages.GetModelMetadataRequest()
        request.model_spec.name = "linear"
        request.metadata_field.append("signature_def")
        answer = predictions.GetModelMetadata(request, timeout=10, metadata=metadata)
        assert "signature_def" in answer.metadata
        status_request = messages.GetModelStatusRequest()
        status_request.model_spec.name = "linear"
        status_request.model_spec.version.value = 1
        status = ModelServiceStub(channel).GetModelStatus(
            status_request, timeout=10, metadata=metadata
        )
        assert [entry.version for entry in status.model_version_status] == [1]


def test_routing_applies_to_grpc_too(
    gateway: GatewayProcess, api_keys: ApiKeys
) -> None:
    metadata = [("x-api-key", api_keys.admin)]
    versions = set()
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        stub = PredictionServiceStub(channel)
        for _ in range(60):
            response = stub.Predict(
                linear_request("rollout"), timeout=10, metadata=metadata
            )
            versions.add(response.model_spec.version.value)
    # rollout splits 50/50 between stable (v1) and canary (v2).
    assert versions == {1, 2}


@pytest.mark.parametrize(
    ("metadata", "model", "code"),
    [
        ([], "linear", grpc.StatusCode.UNAUTHENTICATED),
        (
            [("authorization", "Bearer wrong")],
            "linear",
            grpc.StatusCode.UNAUTHENTICATED,
        ),
        ([("x-api-key", "LINEAR_ONLY")], "rollout", grpc.StatusCode.PERMISSION_DENIED),
        ([("x-api-key", "ADMIN")], "no_such_model", grpc.StatusCode.NOT_FOUND),
    ],
)
def test_grpc_errors_use_the_shared_status_table(
    gateway: GatewayProcess,
    api_keys: ApiKeys,
    metadata: list[tuple[str, str]],
    model: str,
    code: grpc.StatusCode,
) -> None:
    keys = {"LINEAR_ONLY": api_keys.linear_only, "ADMIN": api_keys.admin}
    metadata = [(key, keys.get(value, value)) for key, value in metadata]
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        stub = PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Predict(
                linear_request(model),
                timeout=10,
                metadata=[*metadata, ("x-request-id", "grpc-error-id")],
            )
    assert caught.value.code() == code
    trailers = dict(caught.value.trailing_metadata())
    assert trailers["x-request-id"] == "grpc-error-id"


def test_grpc_rate_limit_sends_retry_after(
    gateway: GatewayProcess, api_keys: ApiKeys
) -> None:
    # A rate-limited key of its own, so the REST test's bucket stays full.
    metadata = [("x-api-key", api_keys.limited_grpc)]
    codes = []
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        stub = PredictionServiceStub(channel)
        for _ in range(8):
            try:
                stub.Predict(linear_request(version=1), timeout=10, metadata=metadata)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as error:
                codes.append(error.code())
                last = error
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
    trailers = dict(last.trailing_metadata())
    assert int(trailers["retry-after"]) >= 1


def test_reload_config_is_not_the_gateways_job(
    gateway: GatewayProcess, api_keys: ApiKeys
) -> None:
    with (
        grpc.insecure_channel(gateway.grpc_target) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        ModelServiceStub(channel).HandleReloadConfigRequest(
            messages.ReloadConfigRequest(),
            timeout=10,
            metadata=[("x-api-key", api_keys.admin)],
        )
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


# ---- gRPC-Web on the HTTP port ------------------------------------------------------

PREDICT_PATH = "/tensorflow.serving.PredictionService/Predict"


def web_call(
    gateway: GatewayProcess,
    path: str,
    message: bytes,
    headers: dict[str, str],
    content_type: str = "application/grpc-web+proto",
) -> tuple[bytes | None, dict[str, str], httpx.Response]:
    """One gRPC-Web call: the answer's message (or None) and its status fields."""
    response = httpx.post(
        gateway.url + path,
        content=grpcweb.frame(message),
        headers={"content-type": content_type, **headers},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    found, trailers = grpcweb.response_parts(response.content)
    status = {**dict(response.headers), **trailers}
    return found, status, response


def test_grpc_web_predict_on_the_http_port(
    gateway: GatewayProcess, api_keys: ApiKeys
) -> None:
    before = gateway.metric(
        "gateway_request_duration_seconds_count", protocol="grpc-web", code="OK"
    )
    request = linear_request(version=2)
    message, status, response = web_call(
        gateway,
        PREDICT_PATH,
        request.SerializeToString(),
        {"x-api-key": api_keys.admin, "x-request-id": "web-id-7"},
    )
    assert status["grpc-status"] == "0"
    assert response.headers["x-request-id"] == "web-id-7"
    assert message is not None
    answer = messages.PredictResponse.FromString(message)
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        over_grpc = PredictionServiceStub(channel).Predict(
            request, timeout=10, metadata=[("x-api-key", api_keys.admin)]
        )
    assert answer == over_grpc
    assert not answer.outputs["predictions"].tensor_content
    np.testing.assert_allclose(
        list(answer.outputs["predictions"].double_val),
        [linear_target(1, 0.5, 5), linear_target(2, -1, 5)],
    )
    after = gateway.metric(
        "gateway_request_duration_seconds_count", protocol="grpc-web", code="OK"
    )
    assert after == before + 1


@pytest.mark.parametrize(
    ("headers", "model", "code"),
    [
        ({}, "linear", grpc.StatusCode.UNAUTHENTICATED),
        ({"authorization": "Bearer wrong"}, "linear", grpc.StatusCode.UNAUTHENTICATED),
        ({"x-api-key": "LINEAR_ONLY"}, "rollout", grpc.StatusCode.PERMISSION_DENIED),
        ({"x-api-key": "ADMIN"}, "no_such_model", grpc.StatusCode.NOT_FOUND),
    ],
)
def test_grpc_web_errors_are_the_grpc_ports(
    gateway: GatewayProcess,
    api_keys: ApiKeys,
    headers: dict[str, str],
    model: str,
    code: grpc.StatusCode,
) -> None:
    keys = {"LINEAR_ONLY": api_keys.linear_only, "ADMIN": api_keys.admin}
    headers = {key: keys.get(value, value) for key, value in headers.items()}
    message, status, _ = web_call(
        gateway, PREDICT_PATH, linear_request(model).SerializeToString(), headers
    )
    assert message is None
    assert int(status["grpc-status"]) == code.value[0]
    with (
        grpc.insecure_channel(gateway.grpc_target) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        PredictionServiceStub(channel).Predict(
            linear_request(model), timeout=10, metadata=list(headers.items())
        )
    assert grpcweb.decode_status_message(status["grpc-message"]) == (
        caught.value.details()
    )


def test_grpc_web_limits_and_malformed_calls(
    gateway: GatewayProcess, api_keys: ApiKeys
) -> None:
    key = {"x-api-key": api_keys.admin}
    big = linear_request()
    from_ndarray(np.zeros(20_000), into=big.inputs["a"])  # 160 kB > 64 KiB limit
    _, status, _ = web_call(gateway, PREDICT_PATH, big.SerializeToString(), key)
    assert status["grpc-status"] == str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])
    _, status, _ = web_call(
        gateway, "/tensorflow.serving.PredictionService/Nope", b"", key
    )
    assert status["grpc-status"] == str(grpc.StatusCode.UNIMPLEMENTED.value[0])
    _, status, _ = web_call(gateway, PREDICT_PATH, b"\xff\xff", key)
    assert status["grpc-status"] == str(grpc.StatusCode.INTERNAL.value[0])
    wrong_type = httpx.post(
        gateway.url + PREDICT_PATH,
        content=b"{}",
        headers={"content-type": "application/json", **key},
        timeout=10,
    )
    assert wrong_type.status_code == 415
