"""Merged Predicts are held to the request's element limit as well as its byte
limit, as the backend holds each request.

The gateway merges concurrent Predicts of one model and layout into one backend
call (``gateway.clients.coalescer``). Each caller is checked against
``--max-request-tensor-elements`` and ``--max-request-tensor-bytes`` alone, and
the backend checks the merged call against its own, here the same. At the
default limits a float64 tensor reaches both at once, but one-byte values
(uint8 here) reach the element limit at an eighth of the byte limit: when the
merge was filled up to the bytes alone, the model server refused it
INVALID_ARGUMENT and the gateway served its callers one by one. The merged call
is now filled while both hold, so callers that fit still merge and the first
that would pass the elements goes in the next call.

Over gRPC Predict, and ModelInfer, REST v1 and v2 typed by the gateway (no REST
backend), and REST v1 bodies merged as JSON for the backend's REST port.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from modelregistry.layout import SERVEKIT_CONFIG_FILE
from servekit_protocol import messages
from servekit_protocol import oip_messages as oip

from tests.security.merging_stack import (
    CALLER_ROWS,
    FIRST_ROWS,
    MESSAGE_LIMIT,
    SPREAD_OUTPUTS,
    concurrent_calls,
    concurrent_posts,
    lone_post,
)
from tests.security.recording import PREDICT
from tests.security.stack import assert_no_traceback
from tests.security.test_gateway_large_grpc import MODEL_INFER
from tests.support.gateway import GatewayProcess, running_gateway
from tests.support.models import publish_regression
from tests.support.modelserver import ModelServer, model_server

pytestmark = pytest.mark.integration

MODEL = "bytes"
LIMIT_ELEMENTS = FIRST_ROWS
"""The element limit of the gateway and the model server: the first call's 16
one-element rows, so four callers of ``CALLER_ROWS`` (4 elements, 4 bytes) fit
one merged call and a fifth does not. The byte limit stays the default 256 MiB,
which the row limit (32) alone would keep every merge far below."""
MOST_CALLERS = 4
"""Most callers one merged call may serve under the element limit (a bound of
the gateway's histogram of callers per call)."""
ROUNDS = 3
"""Most rounds of concurrent calls: the callers merge in each one that finds the
first call (an 8 MiB answer) in flight; one merge is asserted."""


@dataclass(frozen=True)
class Stack:
    server: ModelServer
    typed: GatewayProcess
    """Types v1 and v2 JSON into arrays for the model server's gRPC port."""
    forwarding: GatewayProcess
    """Sends v1 bodies to the model server's REST port, merged as JSON."""


def publish_byte_model(registry: Path) -> None:
    """A linear regression on one uint8 input ``x`` answering
    ``SPREAD_OUTPUTS`` float64 values a row (a few rows make a large answer, so
    the first call stays in flight while the others arrive)."""
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(5)
    features = np.arange(8.0).reshape(-1, 1)
    slopes = rng.normal(size=SPREAD_OUTPUTS)
    model = LinearRegression().fit(features, features * slopes + 0.5)
    publish_regression(
        registry,
        MODEL,
        model,
        features=1,
        outputs=SPREAD_OUTPUTS,
        input_dtype="uint8",
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("element-merge-limit")
    registry = folder / "models"
    publish_byte_model(registry)
    with model_server(
        (
            f"--model_config_file={registry / SERVEKIT_CONFIG_FILE}",
            f"--grpc_max_message_bytes={MESSAGE_LIMIT}",
            f"--max_request_tensor_elements={LIMIT_ELEMENTS}",
        ),
        log_path=folder / "model-server.log",
    ) as server:
        env = {"GATEWAY_REGISTRY": str(registry)}
        flags = [
            f"--default-backend={server.grpc_target}",
            f"--max-request-tensor-elements={LIMIT_ELEMENTS}",
        ]
        rest = f'{{"{server.grpc_target}": "127.0.0.1:{server.rest_port}"}}'
        with (
            running_gateway(folder / "typed", env=env, flags=flags) as typed,
            running_gateway(
                folder / "forwarding",
                env=env,
                flags=[*flags, f"--rest-backends={rest}"],
            ) as forwarding,
        ):
            yield Stack(server, typed, forwarding)
            for gateway in (typed, forwarding):
                assert_no_traceback(gateway.process)
        assert_no_traceback(server.process)


def _values(caller: int, rows: int) -> list[int]:
    """Caller number ``caller``'s own uint8 values (under 256 for every caller
    and row count here)."""
    return [caller * rows + row for row in range(rows)]


def _predict(caller: int, rows: int) -> bytes:
    request = messages.PredictRequest()
    request.model_spec.name = MODEL
    tensor = request.inputs["x"]
    tensor.dtype = messages.DT_UINT8
    tensor.tensor_shape.dim.add(size=rows)
    tensor.tensor_shape.dim.add(size=1)
    tensor.int_val.extend(_values(caller, rows))
    return request.SerializeToString()


def _instances(caller: int, rows: int) -> dict[str, Any]:
    return {"instances": [[value] for value in _values(caller, rows)]}


def _inputs(caller: int, rows: int) -> dict[str, Any]:
    data = _values(caller, rows)
    return {
        "inputs": [{"name": "x", "datatype": "UINT8", "shape": [rows, 1], "data": data}]
    }


def _infer(caller: int, rows: int) -> bytes:
    request = oip.ModelInferRequest(model_name=MODEL)
    tensor = request.inputs.add(name="x", datatype="UINT8", shape=[rows, 1])
    tensor.contents.uint_contents.extend(_values(caller, rows))
    return request.SerializeToString()


def _predict_values(data: bytes) -> np.ndarray:
    output = messages.PredictResponse.FromString(data).outputs["predictions"]
    return np.asarray(output.double_val or np.frombuffer(output.tensor_content))


def _infer_values(data: bytes) -> np.ndarray:
    output = oip.ModelInferResponse.FromString(data).outputs[0]
    return np.asarray(output.contents.fp64_contents, dtype=np.float64)


def _v1_values(body: bytes) -> np.ndarray:
    return np.asarray(json.loads(body)["predictions"], dtype=np.float64).ravel()


def _v2_values(body: bytes) -> np.ndarray:
    return np.asarray(json.loads(body)["outputs"][0]["data"], dtype=np.float64)


Outcomes = list[tuple[bool, bytes]]


def _calls(
    method: str, request: Callable[[int, int], bytes]
) -> Callable[[GatewayProcess], Outcomes]:
    def run(gateway: GatewayProcess) -> Outcomes:
        outcomes = concurrent_calls(gateway, method, request)
        return [(status == "OK", data) for status, data in outcomes]

    return run


def _lone_call(
    method: str, request: Callable[[int, int], bytes]
) -> Callable[[GatewayProcess, int], bytes]:
    def run(gateway: GatewayProcess, caller: int) -> bytes:
        options = [("grpc.max_receive_message_length", MESSAGE_LIMIT)]
        with grpc.insecure_channel(gateway.grpc_target, options=options) as channel:
            data: bytes = channel.unary_unary(method)(
                request(caller, CALLER_ROWS), timeout=60
            )
        return data

    return run


def _posts(
    path: str, body: Callable[[int, int], dict[str, Any]]
) -> Callable[[GatewayProcess], Outcomes]:
    def run(gateway: GatewayProcess) -> Outcomes:
        outcomes = concurrent_posts(gateway, path, body)
        return [(status == 200, data) for status, data in outcomes]

    return run


V1 = f"/v1/models/{MODEL}:predict"
V2 = f"/v2/models/{MODEL}/infer"
CASES = {
    "grpc-predict": (
        "typed",
        _calls(PREDICT, _predict),
        _lone_call(PREDICT, _predict),
        _predict_values,
    ),
    "grpc-model-infer": (
        "typed",
        _calls(MODEL_INFER, _infer),
        _lone_call(MODEL_INFER, _infer),
        _infer_values,
    ),
    "v1-json-typed": (
        "typed",
        _posts(V1, _instances),
        lone_post(V1, _instances),
        _v1_values,
    ),
    "v2-json": ("typed", _posts(V2, _inputs), lone_post(V2, _inputs), _v2_values),
    "v1-json-forwarded": (
        "forwarding",
        _posts(V1, _instances),
        lone_post(V1, _instances),
        _v1_values,
    ),
}


def _calls_over(gateway: GatewayProcess, callers: int) -> float:
    """Backend Predicts the gateway made for more than ``callers`` callers."""
    calls = gateway.metric("gateway_coalesced_requests_count")
    fewer = gateway.metric("gateway_coalesced_requests_bucket", le=f"{callers:.1f}")
    return calls - fewer


def _refused(server: ModelServer) -> int:
    """Requests the model server answered as bad input so far, over any
    protocol: each answer is logged with its error's class (a request over the
    limits is refused before it reaches the request counter)."""
    refused = 0
    for line in server.process.log_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("api_error") == "InvalidInput":
            refused += 1
    return refused


@pytest.mark.parametrize("case", list(CASES))
def test_merged_one_byte_values_are_held_to_the_element_limit(
    stack: Stack, case: str
) -> None:
    which, concurrent, lone, values = CASES[case]
    gateway: GatewayProcess = getattr(stack, which)
    merges = _calls_over(gateway, 1)
    oversized = _calls_over(gateway, MOST_CALLERS)
    refused = _refused(stack.server)
    outcomes: Outcomes = []
    for _ in range(ROUNDS):
        outcomes = concurrent(gateway)
        assert all(ok for ok, _ in outcomes), outcomes[0][1][:200]
        if _calls_over(gateway, 1) > merges:
            break
    assert _calls_over(gateway, 1) > merges, "no call was merged"
    assert _calls_over(gateway, MOST_CALLERS) == oversized, "a merge passed the limit"
    assert _refused(stack.server) == refused, "the model server refused a merge"
    # Each caller's answer is the model's to its own rows (to the last bits the
    # model's arithmetic on a batch and on one caller's rows may differ in).
    for caller in range(1, len(outcomes)):
        np.testing.assert_allclose(
            values(outcomes[caller][1]), values(lone(gateway, caller)), rtol=1e-12
        )
