"""The real Open Inference Protocol clients against the gateway, unchanged.

tritonclient (HTTP with its defaults, i.e. binary tensors, and with JSON; gRPC)
and KServe's `InferenceRESTClient` / `InferenceGRPCClient` call the gateway for a
TensorFlow SavedModel (TF Serving's `half_plus_two`) and a scikit-learn pipeline;
their answers must equal the gateway's v1 (TF Serving REST) answers. The clients
run from .venv-clients (tests/clients/call_gateway.py), since they need
protobuf < 7.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest
from modelregistry import Registry

from tests.support.clients import clients_python, run_client_script
from tests.support.gateway import GatewayProcess, running_gateway
from tests.support.models import (
    TFSERVING_TESTDATA,
    linear_target,
    publish_linear_pipeline,
)
from tests.support.modelserver import model_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HALF_PLUS_TWO = TFSERVING_TESTDATA / "models" / "half_plus_two" / "00000123"
# kserve's InferResponse.from_bytes drops the answer's model_version.
KEEPS_MODEL_VERSION = {"triton-http", "triton-http-json", "triton-grpc", "kserve-grpc"}
INFER_CLIENTS = [
    "triton-http",
    "triton-http-json",
    "triton-grpc",
    "kserve-rest",
    "kserve-rest-json",
    "kserve-grpc",
]


@dataclass
class Stack:
    gateway: GatewayProcess

    @property
    def addresses(self) -> dict[str, str]:
        return {
            "http": f"127.0.0.1:{self.gateway.http_port}",
            "grpc": self.gateway.grpc_target,
        }

    def call(self, client: str, **query: Any) -> Any:
        return run_client_script(
            "call_gateway.py", {"client": client, **self.addresses, **query}
        )

    def v1_predict(self, model: str, body: dict[str, Any]) -> Any:
        response = httpx.post(
            f"{self.gateway.url}/v1/models/{model}:predict", json=body, timeout=30
        )
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    clients_python()  # skip before starting anything when the clients are absent
    if not HALF_PLUS_TWO.is_dir():
        pytest.skip("TF Serving test data is absent")
    root = tmp_path_factory.mktemp("oip") / "models"
    # Copied by hand, as TF Serving users do; the registry lists it all the same.
    shutil.copytree(HALF_PLUS_TWO, root / "half_plus_two" / "123")
    publish_linear_pipeline(root, "tabular", offset=1.0)
    publish_linear_pipeline(root, "tabular", offset=4.0)
    registry = Registry(root)
    registry.set_label("tabular", "stable", 1)
    registry.write_configs()
    logs = root.parent / "logs"
    with (
        model_server(
            [f"--model_config_file={root / 'servekit.config'}"],
            log_path=logs / "model-server.log",
            ready_timeout=240,
        ) as server,
        running_gateway(
            logs,
            env={
                "GATEWAY_REGISTRY": str(root),
                "GATEWAY_DEFAULT_BACKEND": server.grpc_target,
                "GATEWAY_AUTH_ENABLED": "false",
                "GATEWAY_MAX_REQUEST_TENSOR_ELEMENTS": str(TENSOR_ELEMENTS),
            },
        ) as gateway,
    ):
        yield Stack(gateway)


ROWS = [[0.5, -1.0], [1.0, 2.0], [3.0, 0.25]]
TENSOR_ELEMENTS = 1000
"""The gateway's cap on one request's tensor elements, all inputs together."""


def _tabular_inputs(datatype: str = "FP64") -> list[dict[str, Any]]:
    return [
        {"name": "a", "datatype": datatype, "shape": [3], "data": [r[0] for r in ROWS]},
        {"name": "b", "datatype": datatype, "shape": [3], "data": [r[1] for r in ROWS]},
    ]


@pytest.mark.parametrize("client", INFER_CLIENTS)
def test_clients_get_the_v1_answer_of_a_scikit_learn_pipeline(
    stack: Stack, client: str
) -> None:
    expected = stack.v1_predict(
        "tabular", {"instances": [{"a": a, "b": b} for a, b in ROWS]}
    )["predictions"]
    answer = stack.call(client, model="tabular", id="req-7", inputs=_tabular_inputs())
    assert "error" not in answer, answer
    output = answer["outputs"]["predictions"]
    assert output["datatype"] == "FP64"
    assert output["shape"] == [3]
    assert output["data"] == expected
    np.testing.assert_allclose(
        output["data"], [linear_target(a, b, 4.0) for a, b in ROWS], rtol=1e-9
    )
    assert answer["id"] == "req-7"
    assert answer["model_name"] == "tabular"
    if client in KEEPS_MODEL_VERSION:
        assert answer["model_version"] == "2"


@pytest.mark.parametrize("client", INFER_CLIENTS)
def test_clients_get_the_v1_answer_of_a_tensorflow_saved_model(
    stack: Stack, client: str
) -> None:
    values = [1.0, 2.0, 5.0]
    expected = stack.v1_predict(
        "half_plus_two", {"instances": [[value] for value in values]}
    )["predictions"]
    answer = stack.call(
        client,
        model="half_plus_two",
        inputs=[{"name": "x", "datatype": "FP32", "shape": [3, 1], "data": values}],
    )
    assert "error" not in answer, answer
    output = answer["outputs"]["y"]
    assert output["datatype"] == "FP32"
    assert output["shape"] == [3, 1]
    assert [[value] for value in output["data"]] == expected == [[2.5], [3.0], [4.5]]
    if client in KEEPS_MODEL_VERSION:
        assert answer["model_version"] == "123"


@pytest.mark.parametrize("client", ["triton-http", "triton-http-json", "triton-grpc"])
def test_a_version_in_the_path_and_requested_outputs(stack: Stack, client: str) -> None:
    answer = stack.call(
        client,
        model="tabular",
        version="1",
        inputs=_tabular_inputs("FP32"),
        outputs=[{"name": "predictions"}],
    )
    assert "error" not in answer, answer
    assert answer["model_version"] == "1"
    np.testing.assert_allclose(
        answer["outputs"]["predictions"]["data"],
        [linear_target(a, b, 1.0) for a, b in ROWS],
        rtol=1e-6,
    )
    if client == "triton-http":
        assert answer["binary"] == ["predictions"]
    if client == "triton-http-json":
        assert answer["binary"] == []
    if client == "triton-grpc":
        assert answer["raw"] is True


@pytest.mark.parametrize("compression", ["gzip", "deflate"])
def test_compressed_binary_requests_and_answers(stack: Stack, compression: str) -> None:
    # 300 rows: the 2,400-byte answer is above the gateway's compression threshold.
    rows = [[0.01 * i, 1.0 - 0.02 * i] for i in range(300)]
    answer = stack.call(
        "triton-http",
        model="tabular",
        inputs=[
            {"name": name, "datatype": "FP64", "shape": [300], "data": column}
            for name, column in zip("ab", zip(*rows, strict=True), strict=True)
        ],
        compression=compression,
    )
    assert "error" not in answer, answer
    np.testing.assert_allclose(
        answer["outputs"]["predictions"]["data"],
        [linear_target(a, b, 4.0) for a, b in rows],
        atol=1e-9,  # the fitted coefficients are exact to ~1e-15; one target is 0
    )


@pytest.mark.parametrize("client", ["triton-http", "triton-grpc"])
def test_classification_extension(stack: Stack, client: str) -> None:
    # predictions of version 2: 2.0, 12.0, 10.75; the two highest, with their index.
    answer = stack.call(
        client,
        model="tabular",
        inputs=_tabular_inputs(),
        outputs=[{"name": "predictions", "class_count": 2}],
    )
    assert "error" not in answer, answer
    output = answer["outputs"]["predictions"]
    assert output["datatype"] == "BYTES"
    assert output["shape"] == [2]
    assert output["data"] == ["12.000000:1", "10.750000:2"]


@pytest.mark.parametrize("client", ["triton-http", "triton-grpc", "kserve-grpc"])
def test_errors_reach_the_clients_with_the_shared_status(
    stack: Stack, client: str
) -> None:
    missing = stack.call(client, model="nope", inputs=_tabular_inputs())
    assert "error" in missing, missing
    assert "nope" in missing["error"]["message"]
    assert missing["error"]["status"] in ("404", "StatusCode.NOT_FOUND")
    bad = stack.call(
        client,
        model="tabular",
        inputs=[{"name": "a", "datatype": "FP64", "shape": [1], "data": [1.0]}],
    )
    assert "error" in bad, bad
    assert bad["error"]["status"] in ("400", "StatusCode.INVALID_ARGUMENT")


@pytest.mark.parametrize("client", ["triton-http", "triton-grpc"])
def test_tritonclient_reads_health_metadata_and_config(
    stack: Stack, client: str
) -> None:
    answer = stack.call(client, action="describe", model="tabular")
    assert "error" not in answer, answer
    assert answer["live"] is True
    assert answer["ready"] is True
    assert answer["model_ready"] is True
    assert "binary_tensor_data" in answer["server"]["extensions"]
    model = answer["model"]
    assert model["name"] == "tabular"
    assert model["versions"] == ["1", "2"]
    assert model["platform"] == "sklearn"
    assert {i["name"]: i["datatype"] for i in model["inputs"]} == {
        "a": "FP64",
        "b": "FP64",
    }
    config = answer["config"]
    assert config["name"] == "tabular"
    assert [i["name"] for i in config["input"]] == ["a", "b"]
    assert {i["data_type"] for i in config["input"]} == {"TYPE_FP64"}


@pytest.mark.parametrize("client", ["triton-http", "triton-grpc", "kserve-grpc"])
def test_a_version_label_in_place_of_a_version(stack: Stack, client: str) -> None:
    answer = stack.call(
        client, model="tabular", version="stable", inputs=_tabular_inputs()
    )
    assert "error" not in answer, answer
    assert answer["model_version"] == "1"
    np.testing.assert_allclose(
        answer["outputs"]["predictions"]["data"],
        [linear_target(a, b, 1.0) for a, b in ROWS],
    )


@pytest.mark.parametrize("client", ["triton-http", "triton-grpc"])
def test_the_tensor_cap_applies_to_v2(stack: Stack, client: str) -> None:
    rows = TENSOR_ELEMENTS // 2 + 1
    inputs = [
        {"name": name, "datatype": "FP64", "shape": [rows], "data": [1.0] * rows}
        for name in ("a", "b")
    ]
    answer = stack.call(client, model="tabular", inputs=inputs)
    assert "error" in answer, answer
    assert answer["error"]["status"] in ("400", "StatusCode.INVALID_ARGUMENT")
    assert f"the limit is {TENSOR_ELEMENTS} elements" in answer["error"]["message"]
