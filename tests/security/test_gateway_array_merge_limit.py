"""Merged typed REST and Open Inference Protocol Predicts are held to the
request limit together, as each caller is on its own.

The gateway types v1 JSON, OIP JSON and small ModelInfers into arrays and merges
concurrent ones of one model and layout into one backend Predict
(``gateway.clients.coalescer``). Each caller's tensors are checked against
``--max-request-tensor-bytes``; the merged call is filled up to the same limit
(the bytes its callers' arrays hold), so callers that fit still merge and the
first that would pass it goes in the next call. Without that budget only the
row limit (32) bounded a merge: eight callers of a limit's worth each made one
backend request of eight times the limit.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from modelregistry.layout import SERVEKIT_CONFIG_FILE
from servekit_protocol import oip_messages as oip

from tests.security.merging_stack import (
    CALLER_ROWS,
    FIRST_ROWS,
    MESSAGE_LIMIT,
    concurrent_calls,
    concurrent_posts,
    lone_post,
    publish_spread_model,
    spread_infer,
    spread_inputs,
    spread_instances,
)
from tests.security.stack import assert_no_traceback
from tests.security.test_gateway_large_grpc import MODEL_INFER
from tests.support.gateway import GatewayProcess, running_gateway
from tests.support.modelserver import model_server

pytestmark = pytest.mark.integration

LIMIT_BYTES = FIRST_ROWS * 8
"""The gateway's request limit: the first call's 16 float64 rows (128 bytes),
so four callers of ``CALLER_ROWS`` (4 rows, 32 bytes) fit one merged call and
a fifth does not; the row limit alone would let all eight in."""
MOST_CALLERS = 4
"""Most callers one merged call may serve under the limit (a bound of the
gateway's histogram of callers per call)."""
ROUNDS = 3
"""Most rounds of concurrent calls: the callers merge in each one that finds the
first call (an 8 MiB answer) in flight; one merge is asserted."""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway capped at ``LIMIT_BYTES`` typing every call for the model
    server's gRPC port (no REST backend, so v1 JSON is typed too)."""
    folder = tmp_path_factory.mktemp("array-merge-limit")
    registry: Path = folder / "models"
    publish_spread_model(registry, "spread")
    with model_server(
        (
            f"--model_config_file={registry / SERVEKIT_CONFIG_FILE}",
            f"--grpc_max_message_bytes={MESSAGE_LIMIT}",
        ),
        log_path=folder / "model-server.log",
    ) as server:
        with running_gateway(
            folder / "gateway",
            env={"GATEWAY_REGISTRY": str(registry)},
            flags=[
                f"--default-backend={server.grpc_target}",
                f"--max-request-tensor-bytes={LIMIT_BYTES}",
            ],
        ) as gateway:
            yield gateway
            assert_no_traceback(gateway.process)
        assert_no_traceback(server.process)


def _calls_over(gateway: GatewayProcess, callers: int) -> float:
    """Backend Predicts the gateway made for more than ``callers`` callers."""
    calls = gateway.metric("gateway_coalesced_requests_count")
    fewer = gateway.metric("gateway_coalesced_requests_bucket", le=f"{callers:.1f}")
    return calls - fewer


def _v1_values(body: bytes) -> np.ndarray:
    return np.asarray(json.loads(body)["predictions"], dtype=np.float64)


def _v2_values(body: bytes) -> np.ndarray:
    return np.asarray(json.loads(body)["outputs"][0]["data"], dtype=np.float64)


def _infer_values(data: bytes) -> np.ndarray:
    output = oip.ModelInferResponse.FromString(data).outputs[0]
    return np.asarray(output.contents.fp64_contents, dtype=np.float64)


def _posts(
    path: str, body: Callable[[int, int], dict[str, object]]
) -> Callable[[GatewayProcess], list[tuple[bool, bytes]]]:
    def run(gateway: GatewayProcess) -> list[tuple[bool, bytes]]:
        outcomes = concurrent_posts(gateway, path, body)
        return [(status == 200, data) for status, data in outcomes]

    return run


def _infers(gateway: GatewayProcess) -> list[tuple[bool, bytes]]:
    outcomes = concurrent_calls(
        gateway, MODEL_INFER, lambda caller, rows: spread_infer(rows, caller)
    )
    return [(status == "OK", data) for status, data in outcomes]


def _lone_infer(gateway: GatewayProcess, caller: int) -> bytes:
    options = [("grpc.max_receive_message_length", MESSAGE_LIMIT)]
    with grpc.insecure_channel(gateway.grpc_target, options=options) as channel:
        stub = channel.unary_unary(MODEL_INFER)
        data: bytes = stub(spread_infer(CALLER_ROWS, caller), timeout=60)
    return data


V1 = "/v1/models/spread:predict"
V2 = "/v2/models/spread/infer"
PROTOCOLS = {
    "v1-json": (
        _posts(V1, spread_instances),
        lone_post(V1, spread_instances),
        _v1_values,
    ),
    "v2-json": (_posts(V2, spread_inputs), lone_post(V2, spread_inputs), _v2_values),
    "v2-grpc": (_infers, _lone_infer, _infer_values),
}


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_merged_arrays_are_held_to_the_request_limit(
    gateway: GatewayProcess, protocol: str
) -> None:
    concurrent, lone, values = PROTOCOLS[protocol]
    merges = _calls_over(gateway, 1)
    oversized = _calls_over(gateway, MOST_CALLERS)
    outcomes: list[tuple[bool, bytes]] = []
    for _ in range(ROUNDS):
        outcomes = concurrent(gateway)
        assert all(ok for ok, _ in outcomes), outcomes[0][1][:200]
        if _calls_over(gateway, 1) > merges:
            break
    assert _calls_over(gateway, 1) > merges, "no call was merged"
    assert _calls_over(gateway, MOST_CALLERS) == oversized, "a merge passed the limit"
    # Each caller's answer is the model's to its own rows (to the last bits the
    # model's arithmetic on a batch and on one caller's rows may differ in).
    for caller in (1, len(outcomes) - 1):
        np.testing.assert_allclose(
            values(outcomes[caller][1]), values(lone(gateway, caller)), rtol=1e-12
        )
