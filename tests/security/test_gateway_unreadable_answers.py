"""A backend whose Predict answer does not parse as a PredictResponse: the
client gets INTERNAL (HTTP 500) with the same clear message whether the
gateway parsed the answer on receipt (under ``--grpc-parse-offload-bytes``)
or kept it as its bytes and read it in a thread (from it), over OIP gRPC
ModelInfer (typed and raw inputs) and OIP REST ``infer``; one log line a call,
no traceback, and the gateway keeps answering.

The backend (`tests.support.rest_backends.garbled_backend`) answers every
gRPC-Web Predict with a message well formed at its top level (so the gateway
keeps a large one as its bytes) whose output does not parse.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from servekit_protocol import oip_messages as oip

from tests.security.forwarding_stack import grpc_call
from tests.security.stack import assert_no_traceback
from tests.security.test_gateway_large_grpc import MODEL_INFER
from tests.support.gateway import GatewayProcess, running_gateway
from tests.support.processes import free_port
from tests.support.rest_backends import GARBLED_BYTES_A_ROW, garbled_backend

pytestmark = pytest.mark.integration

THRESHOLD = 1024 * 1024
"""The gateway's ``--grpc-parse-offload-bytes`` (its default)."""
ROWS = {"kept": 2 * THRESHOLD // GARBLED_BYTES_A_ROW, "parsed": 1}
"""Rows asked: a 2 MiB answer, kept as its bytes; a 64 KiB one, parsed on
receipt."""
MESSAGE = "unreadable PredictResponse"
"""What the client is told (with protobuf's own words after it)."""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway whose only backend is the garbled one, reached over gRPC-Web."""
    folder = tmp_path_factory.mktemp("unreadable-answers")
    registry = folder / "models"
    registry.mkdir()
    with garbled_backend() as web:
        grpc_target = f"127.0.0.1:{free_port()}"
        env = {
            "GATEWAY_REGISTRY": str(registry),
            "GATEWAY_DEFAULT_BACKEND": grpc_target,
            "GATEWAY_REST_BACKENDS": json.dumps({grpc_target: web}),
        }
        with running_gateway(Path(folder / "gateway"), env=env) as running:
            yield running
            assert_no_traceback(running.process)


def _model_infer(rows: int, raw: bool) -> bytes:
    request = oip.ModelInferRequest(model_name="garbled", id="unreadable")
    tensor = request.inputs.add(name="x", datatype="FP64", shape=[rows, 1])
    values = np.arange(rows, dtype="<f8")
    if raw:
        request.raw_input_contents.append(values.tobytes())
    else:
        tensor.contents.fp64_contents.extend(values.tolist())
    return request.SerializeToString()


LOG_WAIT_SECONDS = 5.0
"""How long the failure's line may take to reach the log file after the
answer (a loaded machine's scheduling; the line is written before it)."""


def _logged(gateway: GatewayProcess) -> int:
    return gateway.process.log_text().count(MESSAGE)


def _assert_logged_once(gateway: GatewayProcess, before: int) -> None:
    deadline = time.monotonic() + LOG_WAIT_SECONDS
    while _logged(gateway) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _logged(gateway) == before + 1, gateway.process.log_tail(10)


@pytest.mark.parametrize("raw", [False, True], ids=["typed", "raw"])
@pytest.mark.parametrize("size", sorted(ROWS))
def test_an_unreadable_answer_to_a_model_infer_is_internal(
    gateway: GatewayProcess, size: str, raw: bool
) -> None:
    logged = _logged(gateway)
    status, message, answer = grpc_call(
        gateway, _model_infer(ROWS[size], raw), MODEL_INFER
    )
    assert (status, answer) == ("INTERNAL", b""), message
    assert message.startswith(MESSAGE), message
    _assert_logged_once(gateway, logged)
    assert_no_traceback(gateway.process)


@pytest.mark.parametrize("size", sorted(ROWS))
def test_an_unreadable_answer_to_a_rest_infer_is_internal(
    gateway: GatewayProcess, size: str
) -> None:
    rows = ROWS[size]
    body = {
        "inputs": [
            {
                "name": "x",
                "datatype": "FP64",
                "shape": [rows, 1],
                "data": [float(row) for row in range(rows)],
            }
        ]
    }
    logged = _logged(gateway)
    response = httpx.post(
        gateway.url + "/v2/models/garbled/infer", json=body, timeout=60
    )
    assert response.status_code == 500, response.text
    assert response.json()["error"].startswith(MESSAGE), response.text
    _assert_logged_once(gateway, logged)
    assert_no_traceback(gateway.process)


def test_the_gateway_answers_the_same_after_unreadable_answers(
    gateway: GatewayProcess,
) -> None:
    """Both kinds of answer again, after every test above: the same status
    and message each time."""
    outcomes = {
        size: grpc_call(gateway, _model_infer(rows, False), MODEL_INFER)[:2]
        for size, rows in ROWS.items()
    }
    assert outcomes["kept"] == outcomes["parsed"], outcomes
    assert outcomes["kept"][0] == "INTERNAL"
    assert httpx.get(gateway.url + "/healthz", timeout=10).status_code == 200
