"""tritonclient's gRPC client sends a large numpy input through the gateway.

``InferenceServerClient.infer`` puts a numpy input in ``raw_input_contents``;
from ``--grpc-parse-offload-bytes`` up the gateway writes those bytes into the
backend's Predict as they came (:mod:`gateway.codecs.v2_spliced`). The answer
must be the model's own: the model server's answer to a Predict of the same
array. The client runs from .venv-clients (tests/clients/call_gateway.py),
since it needs protobuf < 7; the array goes to it in a ``.npy`` file.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from modelregistry.layout import SERVEKIT_CONFIG_FILE
from servekit_protocol import messages
from servekit_protocol.tensors import from_ndarray

from tests.security.test_large_grpc import FEATURES, publish_wide_model
from tests.support.clients import clients_python, run_client_script
from tests.support.gateway import GatewayProcess, running_gateway
from tests.support.modelserver import ModelServer, model_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROWS = 9_000
"""Rows of 256 FP64 values in the large input: 17.6 MiB."""
MESSAGE_LIMIT = 64 * 1024 * 1024
"""Both servers' message limit here: room for the 17.6 MiB input."""
PREDICT = "/tensorflow.serving.PredictionService/Predict"


@dataclass
class Stack:
    server: ModelServer
    gateway: GatewayProcess


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    clients_python()  # skip before starting anything when the clients are absent
    folder = tmp_path_factory.mktemp("oip-large")
    registry = folder / "models"
    publish_wide_model(registry, "wide")
    with (
        model_server(
            [
                f"--model_config_file={registry / SERVEKIT_CONFIG_FILE}",
                f"--grpc_max_message_bytes={MESSAGE_LIMIT}",
            ],
            log_path=folder / "model-server.log",
        ) as server,
        running_gateway(
            folder / "gateway",
            env={
                "GATEWAY_REGISTRY": str(registry),
                "GATEWAY_DEFAULT_BACKEND": server.grpc_target,
            },
            flags=[f"--max-body-bytes={MESSAGE_LIMIT}"],
        ) as gateway,
    ):
        yield Stack(server, gateway)


def _backend_predictions(server: ModelServer, values: np.ndarray) -> np.ndarray:
    """The model server's own answer to a Predict of ``values``."""
    request = messages.PredictRequest()
    request.model_spec.name = "wide"
    request.inputs["x"].CopyFrom(from_ndarray(values, packed=True))
    options = [("grpc.max_send_message_length", MESSAGE_LIMIT)]
    with grpc.insecure_channel(server.grpc_target, options=options) as channel:
        answer = channel.unary_unary(PREDICT)(request.SerializeToString(), timeout=120)
    predictions = messages.PredictResponse.FromString(answer).outputs["predictions"]
    return np.asarray(predictions.double_val)


def test_tritonclient_sends_a_large_numpy_input_through_the_gateway(
    stack: Stack, tmp_path: Path
) -> None:
    values = np.random.default_rng(21).normal(size=(ROWS, FEATURES))
    assert values.nbytes >= 16 * 1024 * 1024
    array_file = tmp_path / "x.npy"
    np.save(array_file, values)
    answer = run_client_script(
        "call_gateway.py",
        {
            "client": "triton-grpc",
            "http": f"127.0.0.1:{stack.gateway.http_port}",
            "grpc": stack.gateway.grpc_target,
            "model": "wide",
            "id": "large",
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP64",
                    "shape": [ROWS, FEATURES],
                    "npy": str(array_file),
                }
            ],
        },
    )
    assert "error" not in answer, answer
    assert answer["id"] == "large"
    assert answer["raw"] is True
    output = answer["outputs"]["predictions"]
    assert output["datatype"] == "FP64"
    assert output["shape"] == [ROWS]
    # The same float64 bytes reach the same model: the same answer, bit for bit.
    expected = _backend_predictions(stack.server, values)
    np.testing.assert_array_equal(np.asarray(output["data"]), expected)
