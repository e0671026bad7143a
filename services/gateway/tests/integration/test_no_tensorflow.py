"""The gateway serves every protocol without ever importing TensorFlow."""

from __future__ import annotations

from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from servekit_protocol import messages
from servekit_protocol.services import PredictionServiceStub
from servekit_protocol.tensors import from_ndarray

from tests.support.gateway import ApiKeys, GatewayProcess

pytestmark = pytest.mark.integration


def test_tensorflow_is_never_imported(
    gateway: GatewayProcess, client: httpx.Client, api_keys: ApiKeys
) -> None:
    row = {"instances": [{"a": 1.0, "b": 1.0}]}
    assert client.post("/v1/models/linear:predict", json=row).status_code == 200
    assert client.get("/v1/models/linear/metadata").status_code == 200
    assert client.post("/models/linear/predict", json=row).status_code == 200
    v2 = {
        "inputs": [
            {"name": "a", "shape": [1], "datatype": "FP64", "data": [1.0]},
            {"name": "b", "shape": [1], "datatype": "FP64", "data": [1.0]},
        ]
    }
    assert client.post("/v2/models/linear/infer", json=v2).status_code == 200
    request = messages.PredictRequest()
    request.model_spec.name = "linear"
    from_ndarray(np.array([1.0]), into=request.inputs["a"])
    from_ndarray(np.array([1.0]), into=request.inputs["b"])
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        PredictionServiceStub(channel).Predict(
            request, timeout=10, metadata=[("x-api-key", api_keys.admin)]
        )
    assert httpx.get(f"{gateway.url}/metrics").status_code == 200

    # -X importtime logs every module the process ever imports, when it does.
    imported = {
        line.split("|")[-1].strip()
        for line in gateway.process.log_text().splitlines()
        if line.startswith("import time:")
    }
    assert "gateway.routes.v1" in imported and "grpc" in imported
    tensorflow_modules = {
        name
        for name in imported
        if name.split(".")[0] in ("tensorflow", "tensorflow_serving", "keras")
    }
    assert tensorflow_modules == set()
    # And no TensorFlow shared library was ever mapped into the process.
    maps = Path(f"/proc/{gateway.process.pid}/maps").read_text()
    assert "libtensorflow" not in maps
    assert "_pywrap_tensorflow" not in maps
