"""No large answer holds the gateway's event loop for more than 50 ms, where
the gateway cuts, compares or converts it: a merged call's answer cut for its
callers, a shadowed call's answer compared with its shadow's, and a small
OIP ModelInfer's large answer written as typed contents.

Measured as in :mod:`tests.security.test_loop_stalls` (the loop thread's CPU
stretches from the gateway's ``gateway_event_loop_busy_seconds``), on the
gateways of :mod:`tests.security.merging_stack`.
"""

from __future__ import annotations

import math
import time

import pytest
from servekit_protocol import oip_messages as oip

from tests.security.forwarding_stack import grpc_call
from tests.security.merging_stack import (
    SPREAD_OUTPUTS,
    MergingGateways,
    concurrent_predicts,
    merged_calls,
    spread_infer,
    spread_request,
)
from tests.security.recording import PREDICT
from tests.security.test_gateway_large_grpc import MODEL_INFER
from tests.security.test_loop_stalls import assert_no_stall

pytestmark = pytest.mark.integration


def _called(merging: MergingGateways, data: bytes, method: str) -> bytes:
    status, message, answer = grpc_call(merging.offloading, data, method)
    assert status == "OK", message
    return answer


def _merged_round(merging: MergingGateways, rows: int) -> None:
    outcomes = concurrent_predicts(merging.offloading, rows)
    assert all(status == "OK" for status, _ in outcomes), outcomes


def test_a_merged_call_s_large_answer_does_not_stall_the_gateways_loop(
    merging: MergingGateways,
) -> None:
    gateway = merging.offloading
    # One row a caller: a 4 MiB merged answer, over the threshold, so the
    # first round starts what cutting answers off the loop needs.
    _merged_round(merging, 1)
    merges = merged_calls(gateway)
    assert_no_stall(
        gateway.url + "/metrics",
        "gateway",
        "gateway, 16 MiB merged answer cut for 8 gRPC callers",
        lambda: _merged_round(merging, 4),
    )
    assert merged_calls(gateway) > merges, "the concurrent calls were not merged"


SHADOWED_ROWS = 60
"""Rows of the shadowed call: a 30 MiB answer, and the shadow's. Parsed and
compared on the loop, answers of 30 and 40 MiB held it 75-250 ms at a
stretch (load average 8-9); at 16 MiB each stretch stayed under 50 ms."""


def _shadowed_call(merging: MergingGateways, rows: int) -> None:
    """One Predict of ``mirrored``, answered once its shadow call's answer has
    been compared (the client's call does not wait for it)."""
    gateway = merging.offloading
    compared = gateway.metric("gateway_shadow_requests_total")
    agreed = gateway.metric("gateway_shadow_requests_total", outcome="agree")
    _called(merging, spread_request(0, rows, model="mirrored"), PREDICT)
    deadline = time.monotonic() + 60
    while gateway.metric("gateway_shadow_requests_total") <= compared:
        assert time.monotonic() < deadline, "the shadow call was not compared"
        time.sleep(0.05)
    assert gateway.metric("gateway_shadow_requests_total", outcome="agree") > agreed


def test_a_shadowed_call_s_large_answers_do_not_stall_the_gateways_loop(
    merging: MergingGateways,
) -> None:
    """Its 30 MiB answer and the shadow's, compared."""
    # Four rows: 2 MiB answers, over the threshold, so the first call starts
    # what comparing off the loop needs.
    _shadowed_call(merging, 4)
    assert_no_stall(
        merging.offloading.url + "/metrics",
        "gateway",
        "gateway, 30 MiB answer of a shadowed gRPC Predict and its shadow's",
        lambda: _shadowed_call(merging, SHADOWED_ROWS),
    )


INFER_ROWS = 80
"""Rows of the small ModelInfer: 640 bytes of request, a 40 MiB typed answer."""


def _small_infer(merging: MergingGateways, rows: int) -> None:
    answer = _called(merging, spread_infer(rows), MODEL_INFER)
    response = oip.ModelInferResponse.FromString(answer)
    assert math.prod(response.outputs[0].shape) == rows * SPREAD_OUTPUTS


def test_a_small_model_infer_s_large_answer_does_not_stall_the_gateways_loop(
    merging: MergingGateways,
) -> None:
    # Four rows: a 2 MiB answer, over the threshold, so the first call starts
    # what writing answers off the loop needs.
    _small_infer(merging, 4)
    assert_no_stall(
        merging.offloading.url + "/metrics",
        "gateway",
        "gateway, 40 MiB typed answer to a small ModelInfer",
        lambda: _small_infer(merging, INFER_ROWS),
    )
