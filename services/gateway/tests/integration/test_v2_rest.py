"""The Open Inference Protocol (v2) through the gateway, translated to TF Serving gRPC."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from tests.support.gateway import GatewayProcess
from tests.support.models import linear_target

pytestmark = pytest.mark.integration


def test_server_health_and_metadata(gateway: GatewayProcess) -> None:
    assert httpx.get(f"{gateway.url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{gateway.url}/v2/health/ready").status_code == 200
    assert httpx.get(f"{gateway.url}/v2").json()["name"] == "servekit-gateway"


def test_model_metadata_and_readiness(client: httpx.Client) -> None:
    metadata = client.get("/v2/models/linear")
    assert metadata.status_code == 200, metadata.text
    body = metadata.json()
    assert body["name"] == "linear"
    assert body["platform"] == "sklearn"
    assert {entry["name"]: entry["datatype"] for entry in body["inputs"]} == {
        "a": "FP64",
        "b": "FP64",
    }
    assert body["outputs"] == [
        {"name": "predictions", "datatype": "FP64", "shape": [-1]}
    ]
    assert client.get("/v2/models/linear/versions/1/ready").json() == {
        "name": "linear",
        "ready": True,
    }
    assert client.get("/v2/models/no_such_model/ready").status_code == 404


def test_infer_with_named_outputs_id_and_version(client: httpx.Client) -> None:
    response = client.post(
        "/v2/models/linear/versions/2/infer",
        json={
            "id": "req-1",
            "inputs": [
                {"name": "a", "shape": [2], "datatype": "FP64", "data": [1.0, 2.0]},
                # FP32 for an FP64 input: the gateway converts it.
                {"name": "b", "shape": [2], "datatype": "FP32", "data": [0.5, 1.5]},
            ],
            "outputs": [{"name": "predictions"}],
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == "req-1"
    assert body["model_name"] == "linear"
    assert body["model_version"] == "2"
    (output,) = body["outputs"]
    assert output["name"] == "predictions"
    assert output["datatype"] == "FP64"
    assert output["shape"] == [2]
    np.testing.assert_allclose(
        output["data"], [linear_target(1, 0.5, 5), linear_target(2, 1.5, 5)]
    )


@pytest.mark.parametrize(
    "inputs",
    [
        [{"name": "a", "shape": [3], "datatype": "FP64", "data": [1.0, 2.0]}],
        [{"name": "a", "shape": [1], "datatype": "COMPLEX", "data": [1.0]}],
        [{"name": "a", "shape": [1], "datatype": "FP64", "data": ["x"]}],
    ],
)
def test_invalid_infer_requests_are_400(
    client: httpx.Client, inputs: list[dict[str, object]]
) -> None:
    response = client.post(
        "/v2/models/linear/versions/1/infer", json={"inputs": inputs}
    )
    assert response.status_code == 400
    assert "error" in response.json()
