"""Every backend call but a lone v1 `:predict` goes as gRPC-Web on the backend's
REST port, or over gRPC where that port has no gRPC-Web (TF Serving's); retries,
the circuit breaker and the deadline hold on that path too."""

from __future__ import annotations

import time

import grpc
import httpx
import numpy as np
import pytest
from servekit_protocol import messages
from servekit_protocol.tensors import from_ndarray, to_ndarray

from tests.support.forwarding import (
    grpc_failure,
    grpc_predict,
    linear_request,
    served_count,
)
from tests.support.gateway import GatewayProcess
from tests.support.modelserver import ModelServer
from tests.support.rest_backends import BusyBackend


def test_grpc_predicts_reach_the_backend_as_grpc_web(
    gateway: GatewayProcess, backend: ModelServer
) -> None:
    web_before = served_count(backend, "grpc-web")
    grpc_before = served_count(backend, "grpc")
    via = grpc_predict(gateway.grpc_target, linear_request(version=1))
    assert served_count(backend, "grpc-web") == web_before + 1
    direct = grpc_predict(backend.grpc_target, linear_request(version=1))
    assert via == direct
    np.testing.assert_allclose(
        to_ndarray(via.outputs["predictions"]), [2 * 0 + 1.5 + 1.0, 2 * 1 + 1.5 + 1.0]
    )
    assert served_count(backend, "grpc") == grpc_before + 1  # the direct call only


def test_v2_infer_goes_as_grpc_web(
    gateway: GatewayProcess, backend: ModelServer
) -> None:
    web_before = served_count(backend, "grpc-web")
    answer = httpx.post(
        f"{gateway.url}/v2/models/linear/versions/2/infer",
        json={
            "inputs": [
                {"name": "a", "datatype": "FP64", "shape": [1], "data": [1.0]},
                {"name": "b", "datatype": "FP64", "shape": [1], "data": [2.0]},
            ]
        },
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == pytest.approx([2 + 6 + 5.0])
    assert served_count(backend, "grpc-web") == web_before + 1


def test_backend_errors_over_grpc_web_are_the_backends(
    gateway: GatewayProcess, backend: ModelServer
) -> None:
    request = linear_request(version=9)
    via = grpc_failure(gateway.grpc_target, request)
    direct = grpc_failure(backend.grpc_target, request)
    assert via.code() == direct.code() == grpc.StatusCode.NOT_FOUND
    assert via.details() == direct.details()
    wrong = linear_request(version=1)
    wrong.inputs["c"].CopyFrom(wrong.inputs["a"])
    via = grpc_failure(gateway.grpc_target, wrong)
    assert via.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert via.details() == grpc_failure(backend.grpc_target, wrong).details()


def test_a_backend_without_grpc_web_is_called_over_grpc(
    gateway: GatewayProcess, backend: ModelServer
) -> None:
    web_before = served_count(backend, "grpc-web")
    grpc_before = served_count(backend, "grpc")
    for _ in range(2):
        request = linear_request()
        request.model_spec.name = "plain"
        answer = grpc_predict(gateway.grpc_target, request)
        np.testing.assert_allclose(
            to_ndarray(answer.outputs["predictions"]), [1.5 + 4.0, 2 + 1.5 + 4.0]
        )
    assert served_count(backend, "grpc") == grpc_before + 2
    assert served_count(backend, "grpc-web") == web_before
    found = [
        line
        for line in gateway.process.log_text().splitlines()
        if "has no gRPC-Web" in line
    ]
    assert len(found) == 1, found


def test_grpc_web_unavailable_is_retried(
    gateway: GatewayProcess, busy_rest: BusyBackend
) -> None:
    retries_before = gateway.metric("gateway_backend_retries_total")
    request = linear_request()
    request.model_spec.name = "webflaky"
    answer = grpc_predict(gateway.grpc_target, request)
    np.testing.assert_allclose(to_ndarray(answer.outputs["y"]), [42.0])
    assert busy_rest.calls["web:webflaky"] == 2
    assert gateway.metric("gateway_backend_retries_total") - retries_before == 1


def test_a_silent_grpc_web_backend_is_deadline_exceeded(
    gateway: GatewayProcess,
) -> None:
    request = linear_request()
    request.model_spec.name = "silent"
    started = time.perf_counter()
    failure = grpc_failure(gateway.grpc_target, request, timeout=0.4)
    elapsed = time.perf_counter() - started
    assert failure.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert elapsed < 3.0


def test_an_unreachable_grpc_web_backend_is_unavailable(
    gateway: GatewayProcess,
) -> None:
    request = linear_request()
    request.model_spec.name = "webdead"
    failure = grpc_failure(gateway.grpc_target, request)
    assert failure.code() == grpc.StatusCode.UNAVAILABLE
    assert "unavailable" in (failure.details() or "")


def test_a_vanished_canary_label_falls_back_to_stable_over_grpc(
    gateway: GatewayProcess,
) -> None:
    canary_before = gateway.metric(
        "gateway_route_requests_total", model="twin", route="canary"
    )
    request = messages.PredictRequest()
    request.model_spec.name = "twin"
    from_ndarray(np.array([1.0]), into=request.inputs["a"])
    from_ndarray(np.array([2.0]), into=request.inputs["b"])
    answer = grpc_predict(gateway.grpc_target, request)
    # Routed to the canary first (weight 1.0); the backend has no such label, so
    # the stable version answered.
    assert (
        gateway.metric("gateway_route_requests_total", model="twin", route="canary")
        == canary_before + 1
    )
    assert answer.model_spec.version.value == 1
    np.testing.assert_allclose(to_ndarray(answer.outputs["predictions"]), [9.0])
