"""`servekit serve`: the embedded default, started for real.

A registry with a scikit-learn pipeline (published with a manifest) and TF Serving's
`half_plus_two` SavedModel copied in by hand (no manifest). `servekit serve` must
bring up the model server and the gateway, print URLs and a sample request that
works, serve the hand-copied SavedModel through v1 (the book's chapter 19 clients,
REST and gRPC), v2 and gRPC, and stop both processes cleanly on SIGTERM.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from modelregistry import Registry

from tests.support.models import (
    TFSERVING_TESTDATA,
    linear_target,
    publish_linear_pipeline,
)
from tests.support.processes import VENV_BIN, ServerProcess, free_port, running_process

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HALF_PLUS_TWO = TFSERVING_TESTDATA / "models" / "half_plus_two" / "00000123"


@dataclass
class Served:
    """The running `servekit serve` and its four ports."""

    process: ServerProcess
    http_port: int
    grpc_port: int
    model_server_port: int
    model_server_rest_port: int
    registry: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    if not HALF_PLUS_TWO.is_dir():
        pytest.skip("TF Serving test data is absent")
    root = tmp_path_factory.mktemp("serve") / "models"
    publish_linear_pipeline(root, "tabular", offset=1.0)
    # Copied by hand, as TF Serving users do: no manifest, no configs regenerated.
    shutil.copytree(HALF_PLUS_TWO, root / "half_plus_two" / "123")
    ports = [free_port() for _ in range(4)]
    while len(set(ports)) < 4:
        ports = [free_port() for _ in range(4)]
    http_port, grpc_port, ms_port, ms_rest_port = ports
    log_dir = root.parent / "logs"
    argv: list[str | os.PathLike[str]] = [
        VENV_BIN / "servekit",
        "serve",
        "--registry",
        root,
        "--port",
        str(http_port),
        "--grpc-port",
        str(grpc_port),
        "--model-server-port",
        str(ms_port),
        "--model-server-rest-port",
        str(ms_rest_port),
        "--log-dir",
        log_dir,
    ]
    output = root.parent / "serve.log"
    with running_process(
        argv,
        log_path=output,
        ready=lambda: "Ctrl-C stops both processes" in output.read_text(),
        ready_timeout=240,
        stop_timeout=40,
    ) as process:
        yield Served(process, http_port, grpc_port, ms_port, ms_rest_port, root)


def test_prints_urls_and_a_sample_request_that_works(served: Served) -> None:
    text = served.process.log_text()
    assert served.url in text
    assert f"127.0.0.1:{served.grpc_port}" in text
    curls = [
        line.strip() for line in text.splitlines() if line.strip().startswith("curl ")
    ]
    assert curls, text
    for line in curls:
        result = subprocess.run(
            shlex.split(line), capture_output=True, text=True, timeout=30, check=True
        )
        body = json.loads(result.stdout)
        assert "error" not in body, (line, body)
    answer = json.loads(
        subprocess.run(
            shlex.split(curls[0]),
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    )
    row = Registry(served.registry).manifest("tabular", 1).examples[0]
    np.testing.assert_allclose(
        answer["predictions"], [linear_target(row["a"], row["b"], 1.0)]
    )


def test_savedmodel_without_manifest_over_v1_with_the_books_client(
    served: Served,
) -> None:
    import requests

    # "Hands-On ML" chapter 19, unchanged but for the port: auth is off locally.
    x_new = np.array([[1.0], [2.0], [5.0]])
    input_data_json = json.dumps(
        {"signature_name": "serving_default", "instances": x_new.tolist()}
    )
    server_url = f"{served.url}/v1/models/half_plus_two:predict"
    response = requests.post(server_url, data=input_data_json, timeout=30)
    response.raise_for_status()
    y_proba = np.array(response.json()["predictions"])
    np.testing.assert_allclose(y_proba, [[2.5], [3.0], [4.5]])


def test_savedmodel_without_manifest_over_v2(served: Served) -> None:
    response = httpx.post(
        f"{served.url}/v2/models/half_plus_two/infer",
        json={
            "inputs": [
                {"name": "x", "shape": [3, 1], "datatype": "FP32", "data": [1, 2, 5]}
            ]
        },
        timeout=30,
    )
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    assert (output["datatype"], output["shape"]) == ("FP32", [3, 1])
    np.testing.assert_allclose(output["data"], [2.5, 3.0, 4.5])
    metadata = httpx.get(f"{served.url}/v2/models/half_plus_two", timeout=30).json()
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 1]}]


@pytest.mark.parametrize(
    ("verb", "signature", "expected"),
    [
        ("regress", "regress_x_to_y", {"results": [2.5, 3.0]}),
        ("classify", "classify_x_to_y", {"results": [[["", 2.5]], [["", 3.0]]]}),
    ],
)
def test_classify_and_regress_match_the_model_server(
    served: Served, verb: str, signature: str, expected: dict[str, object]
) -> None:
    body = {"signature_name": signature, "examples": [{"x": 1.0}, {"x": 2.0}]}
    path = f"/v1/models/half_plus_two:{verb}"
    through = httpx.post(served.url + path, json=body, timeout=30)
    direct = httpx.post(
        f"http://127.0.0.1:{served.model_server_rest_port}{path}", json=body, timeout=30
    )
    assert through.status_code == direct.status_code == 200, through.text
    assert through.json() == direct.json() == expected


def test_only_models_with_a_manifest_get_typed_endpoints(served: Served) -> None:
    paths = httpx.get(f"{served.url}/openapi.json", timeout=30).json()["paths"]
    assert "/models/tabular/predict" in paths
    assert not any(path.startswith("/models/half_plus_two") for path in paths)
    response = httpx.post(
        f"{served.url}/models/tabular/predict",
        json={"instances": [{"a": 1.0, "b": 2.0}]},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["predictions"], [linear_target(1, 2, 1)])


def test_official_grpc_client_through_the_gateway(served: Served) -> None:
    tf = pytest.importorskip("tensorflow")
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        # The book's chapter 19 gRPC client, on the SavedModel without manifest.
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "half_plus_two"
        request.model_spec.signature_name = "serving_default"
        request.inputs["x"].CopyFrom(
            tf.make_tensor_proto(np.array([[1.0], [5.0]], dtype=np.float32))
        )
        response = stub.Predict(request, timeout=30)
        np.testing.assert_allclose(
            tf.make_ndarray(response.outputs["y"]), [[2.5], [4.5]]
        )
        assert response.model_spec.version.value == 123

        request = predict_pb2.PredictRequest()
        request.model_spec.name = "tabular"
        request.inputs["a"].CopyFrom(tf.make_tensor_proto([1.0, 0.0], dtype=tf.float64))
        request.inputs["b"].CopyFrom(tf.make_tensor_proto([2.0, 1.0], dtype=tf.float64))
        response = stub.Predict(request, timeout=30)
        np.testing.assert_allclose(
            tf.make_ndarray(response.outputs["predictions"]),
            [linear_target(1, 2, 1), linear_target(0, 1, 1)],
        )


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_sigterm_stops_both_processes_cleanly(served: Served) -> None:
    ports = (
        served.http_port,
        served.grpc_port,
        served.model_server_port,
        served.model_server_rest_port,
    )
    assert all(_listening(port) for port in ports)
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(timeout=40) == 0
    assert not any(_listening(port) for port in ports)
    assert "stopped" in served.process.log_text()
