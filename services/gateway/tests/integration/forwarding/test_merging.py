"""Concurrent requests for one target are merged into one backend call: REST
`:predict` bodies as JSON into one REST call, gRPC Predicts into one gRPC-Web call;
each caller gets its own rows, or its own error."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
from servekit_protocol.services import PredictionServiceStub
from servekit_protocol.tensors import from_ndarray, to_ndarray

from tests.support.forwarding import (
    burst,
    linear_request,
    merged_callers,
    predict,
    served_count,
)
from tests.support.gateway import GatewayProcess
from tests.support.modelserver import ModelServer
from tests.support.numerics import assert_same_prediction


def test_concurrent_requests_are_merged_into_rest_calls_and_answer_each_caller(
    gateway: GatewayProcess, backend: ModelServer
) -> None:
    grpc_before = served_count(backend, "grpc")
    rest_before = served_count(backend, "rest")
    merged_before = merged_callers(gateway)
    rows = [{"a": float(i), "b": 1.0} for i in range(64)]
    bodies = [json.dumps({"instances": [row]}).encode() for row in rows]
    answers = burst(gateway.url, "/v1/models/linear/versions/1:predict", bodies)
    for row, answer in zip(rows, answers, strict=True):
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-model-version"] == "1"
        assert answer.json() == {
            "predictions": pytest.approx([2 * row["a"] + 3 * row["b"] + 1.0])
        }
    assert served_count(backend, "grpc") == grpc_before
    calls = served_count(backend, "rest") - rest_before
    assert 1 <= calls < 64
    assert merged_callers(gateway) - merged_before == 64 - calls


def test_merged_columns_answer_each_caller_as_a_direct_call(
    gateway: GatewayProcess, backend: ModelServer
) -> None:
    bodies = [
        json.dumps({"inputs": {"a": [float(i), 1.0], "b": [2.0, float(-i)]}}).encode()
        for i in range(48)
    ]
    path = "/v1/models/linear/versions/2:predict"
    for body, answer in zip(bodies, burst(gateway.url, path, bodies), strict=True):
        direct = predict(backend.rest_url, path, body)
        assert answer.status_code == direct.status_code == 200
        merged, alone = answer.json(), direct.json()
        assert merged.keys() == alone.keys() == {"outputs"}
        assert_same_prediction(merged["outputs"], alone["outputs"])


def test_a_bad_body_in_a_merged_call_gets_its_own_error(
    gateway: GatewayProcess, backend: ModelServer
) -> None:
    good = [json.dumps({"instances": [{"a": float(i), "b": 0.0}]}) for i in range(40)]
    bad = json.dumps({"instances": [{"a": "text", "b": 0.0}]})
    bodies = [(bad if i % 8 == 3 else good[i]).encode() for i in range(40)]
    path = "/v1/models/linear/versions/1:predict"
    refused = predict(backend.rest_url, path, bad.encode())
    assert refused.status_code == 400
    for i, answer in enumerate(burst(gateway.url, path, bodies)):
        if i % 8 == 3:
            assert answer.status_code == 400
            assert answer.json() == refused.json()
        else:
            assert answer.status_code == 200, answer.text
            assert answer.json()["predictions"] == pytest.approx([2.0 * i + 1.0])


def test_concurrent_grpc_predicts_are_merged_into_grpc_web_calls(
    gateway: GatewayProcess, backend: ModelServer
) -> None:
    web_before = served_count(backend, "grpc-web")
    grpc_before = served_count(backend, "grpc")
    merged_before = merged_callers(gateway)
    requests = []
    for i in range(48):
        request = linear_request(version=2, rows=1)
        from_ndarray(np.array([float(i)]), into=request.inputs["a"])
        requests.append(request)
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        stub = PredictionServiceStub(channel)
        futures = [stub.Predict.future(r, timeout=30) for r in requests]
        answers = [future.result() for future in futures]
    for i, answer in enumerate(answers):
        np.testing.assert_allclose(
            to_ndarray(answer.outputs["predictions"]), [2 * i + 1.5 + 5.0]
        )
        assert answer.model_spec.version.value == 2
    calls = served_count(backend, "grpc-web") - web_before
    assert 1 <= calls < 48
    assert merged_callers(gateway) - merged_before == 48 - calls
    assert served_count(backend, "grpc") == grpc_before
