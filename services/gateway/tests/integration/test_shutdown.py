"""SIGTERM: the gateway finishes in-flight requests (HTTP and gRPC), then exits 0."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from servekit_protocol import messages
from servekit_protocol.services import PredictionServiceStub
from servekit_protocol.tensors import from_ndarray, to_ndarray

from tests.support.gateway import running_gateway
from tests.support.slow_backend import slow_backend

pytestmark = pytest.mark.integration


def test_sigterm_drains_in_flight_requests(tmp_path: Path) -> None:
    with (
        slow_backend(1.0) as backend,
        running_gateway(
            tmp_path,
            env={
                "GATEWAY_DEFAULT_BACKEND": backend,
                "GATEWAY_REGISTRY": str(tmp_path / "models"),
            },
        ) as gateway,
        ThreadPoolExecutor(max_workers=2) as pool,
    ):
        # Warm the signature cache so the timed requests are pure predictions.
        warm = httpx.post(
            f"{gateway.url}/v1/models/m:predict", json={"instances": [1.0]}, timeout=10
        )
        assert warm.status_code == 200, warm.text

        def rest_call() -> httpx.Response:
            return httpx.post(
                f"{gateway.url}/v1/models/m:predict",
                json={"instances": [3.0]},
                timeout=10,
            )

        def grpc_call() -> messages.PredictResponse:
            request = messages.PredictRequest()
            request.model_spec.name = "m"
            from_ndarray(np.array([5.0], np.float32), into=request.inputs["x"])
            with grpc.insecure_channel(gateway.grpc_target) as channel:
                response: messages.PredictResponse = PredictionServiceStub(
                    channel
                ).Predict(request, timeout=10)
                return response

        rest = pool.submit(rest_call)
        over_grpc = pool.submit(grpc_call)
        time.sleep(0.4)
        gateway.process.send_signal(signal.SIGTERM)
        assert rest.result(timeout=10).json() == {"predictions": [6.0]}
        assert to_ndarray(over_grpc.result(timeout=10).outputs["y"]).tolist() == [10.0]
        assert gateway.process.wait(timeout=30) == 0
        assert "gateway stopped" in gateway.process.log_text()
