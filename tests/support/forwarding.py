"""Calls the gateway's forwarding tests make, and the counters they read.

Which API served a call is read from the model server's own request counter,
whose `protocol` label says `rest`, `grpc` or `grpc-web`; merging, from the
gateway's `gateway_coalesced_requests` histogram.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import numpy as np
import pytest
from servekit_protocol import messages
from servekit_protocol.services import PredictionServiceStub
from servekit_protocol.tensors import from_ndarray

from tests.support.gateway import GatewayProcess
from tests.support.metrics import sample_sum
from tests.support.modelserver import METRICS_PATH, ModelServer

ROW = {"a": 1.0, "b": 2.0}
BODY = json.dumps({"instances": [ROW]}).encode()


def served_count(server: ModelServer, protocol: str) -> float:
    """Predict requests the model server answered over `protocol` so far."""
    text = httpx.get(f"{server.rest_url}{METRICS_PATH}", timeout=10).text
    return sample_sum(
        text, "modelserver_request_count_total", api="predict", protocol=protocol
    )


def predict(
    base: str, path: str, body: bytes = BODY, headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.post(
        f"{base}{path}",
        content=body,
        headers={"content-type": "application/json", **(headers or {})},
        timeout=30,
    )


def burst(base: str, path: str, bodies: list[bytes]) -> list[httpx.Response]:
    """The bodies sent 16 at a time, answers in order."""
    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(lambda body: predict(base, path, body), bodies))


def merged_callers(gateway: GatewayProcess) -> float:
    """Callers served by merged calls beyond one per call, so far."""
    served = gateway.metric("gateway_coalesced_requests_sum")
    return served - gateway.metric("gateway_coalesced_requests_count")


def linear_request(
    version: int | None = None, rows: int = 2
) -> messages.PredictRequest:
    request = messages.PredictRequest()
    request.model_spec.name = "linear"
    if version is not None:
        request.model_spec.version.value = version
    from_ndarray(np.arange(rows, dtype=np.float64), into=request.inputs["a"])
    from_ndarray(np.full(rows, 0.5), into=request.inputs["b"])
    return request


def grpc_predict(
    target: str, request: messages.PredictRequest, timeout: float = 30
) -> messages.PredictResponse:
    with grpc.insecure_channel(target) as channel:
        response: messages.PredictResponse = PredictionServiceStub(channel).Predict(
            request, timeout=timeout
        )
        return response


def grpc_failure(
    target: str, request: messages.PredictRequest, timeout: float = 30
) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        grpc_predict(target, request, timeout)
    return caught.value
