"""No large answer holds the gateway's event loop for more than 50 ms, where
the gateway cuts, compares or converts it: a merged call's answer cut for its
callers, a shadowed call's answer compared with its shadow's, a small
OIP ModelInfer's large answer written as typed contents, and the large
answers of a REST v1 `:predict` translated to gRPC and of an OIP REST
`infer`, decoded into arrays, a merged REST v1 `:predict`'s JSON answer
cut for its callers, and the shares of merged OIP ModelInfer and REST `infer`
calls written for their callers. Parsed and decoded on the loop, those two
40 MiB answers held it 75 and 100 ms at a stretch (load average 2.8); read
and cut on the loop, the 40 MB merged JSON answer held it 500 ms (load
average 8); eight merged ModelInfer shares of 2 MiB written on the loop, 100
ms (load average 2.6).

Measured as in :mod:`tests.security.test_loop_stalls` (the loop thread's CPU
stretches from the gateway's ``gateway_event_loop_busy_seconds``), on the
gateways of :mod:`tests.security.merging_stack`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from servekit_protocol import oip_messages as oip

from tests.security.forwarding_stack import grpc_call
from tests.security.loopstall import assert_no_stall
from tests.security.merging_stack import (
    FIRST_ROWS,
    SPREAD_OUTPUTS,
    MergingGateways,
    concurrent_calls,
    concurrent_posts,
    concurrent_predicts,
    merged_calls,
    spread_infer,
    spread_inputs,
    spread_instances,
    spread_request,
)
from tests.security.recording import PREDICT
from tests.security.test_gateway_large_grpc import MODEL_INFER
from tests.support.gateway import GatewayProcess

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


def _merged_infer_round(merging: MergingGateways, rows: int) -> None:
    outcomes = concurrent_calls(merging.offloading, MODEL_INFER, _infer_of, rows)
    assert all(status == "OK" for status, _ in outcomes), outcomes


def _infer_of(caller: int, rows: int) -> bytes:
    return spread_infer(rows, caller)


def test_a_merged_model_infer_s_large_answers_do_not_stall_the_gateways_loop(
    merging: MergingGateways,
) -> None:
    """Eight typed ModelInfers merged into one backend call: each caller's
    2 MiB share written as a ModelInferResponse with typed contents. Built on
    the loop, the eight held it 60-110 ms at a stretch (load average 4)."""
    gateway = merging.offloading
    _merged_infer_round(merging, 1)
    merges = merged_calls(gateway)
    assert_no_stall(
        gateway.url + "/metrics",
        "gateway",
        "gateway, 16 MiB merged answer written for 8 OIP ModelInfer callers",
        lambda: _merged_infer_round(merging, 4),
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


REST_ROWS = 80
"""Rows of the REST calls: a 40 MiB answer from the backend, 5.2 million
float64 values written as JSON."""


def _rest_predict(
    merging: MergingGateways, rows: int, gateway: GatewayProcess | None = None
) -> bytes:
    """A TF Serving v1 `:predict` of ``mirrored`` (shadowed, so translated to
    a gRPC call rather than forwarded to the backend's REST API); its body."""
    instances = [[float(row)] for row in range(rows)]
    response = httpx.post(
        (gateway or merging.offloading).url + "/v1/models/mirrored:predict",
        json={"instances": instances},
        timeout=120,
    )
    assert response.status_code == 200, response.text[:300]
    predictions = response.json()["predictions"]
    assert len(predictions) == rows
    assert len(predictions[0]) == SPREAD_OUTPUTS
    return response.content


def test_a_rest_predict_s_large_answer_does_not_stall_the_gateways_loop(
    merging: MergingGateways,
) -> None:
    # Four rows: a 2 MiB answer, over the threshold, so the first call starts
    # what decoding answers off the loop needs.
    _rest_predict(merging, 4)
    assert_no_stall(
        merging.offloading.url + "/metrics",
        "gateway",
        "gateway, 40 MiB answer of a REST v1 :predict translated to gRPC",
        lambda: _rest_predict(merging, REST_ROWS),
    )


def _rest_infer(
    merging: MergingGateways, rows: int, gateway: GatewayProcess | None = None
) -> bytes:
    """An Open Inference Protocol REST `infer` of ``spread``; its body."""
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
    response = httpx.post(
        (gateway or merging.offloading).url + "/v2/models/spread/infer",
        json=body,
        timeout=120,
    )
    assert response.status_code == 200, response.text[:300]
    output = response.json()["outputs"][0]
    assert output["shape"] == [rows, SPREAD_OUTPUTS]
    assert len(output["data"]) == rows * SPREAD_OUTPUTS
    return response.content


def test_an_oip_rest_infer_s_large_answer_does_not_stall_the_gateways_loop(
    merging: MergingGateways,
) -> None:
    _rest_infer(merging, 4)
    assert_no_stall(
        merging.offloading.url + "/metrics",
        "gateway",
        "gateway, 40 MiB answer of an OIP REST v2 infer",
        lambda: _rest_infer(merging, REST_ROWS),
    )


@pytest.mark.parametrize("call", [_rest_predict, _rest_infer])
def test_rest_answers_decoded_off_the_loop_are_the_bytes_of_those_decoded_on_it(
    merging: MergingGateways,
    call: Callable[[MergingGateways, int, GatewayProcess], bytes],
) -> None:
    """The same call to the gateway that decodes every answer on its loop
    (``--grpc-parse-offload-bytes=0``) answers the same bytes, over the
    threshold (8 rows, 4 MiB) and under it (1 row, 512 KiB)."""
    for rows in (8, 1):
        off = call(merging, rows, merging.offloading)
        on = call(merging, rows, merging.parsing)
        assert off == on, f"{rows} rows: the answers differ"


def _merged_rest_round(
    merging: MergingGateways,
    rows: int,
    path: str = "/v1/models/spread:predict",
    body: Callable[[int, int], dict[str, Any]] = spread_instances,
) -> None:
    """One first REST call of ``spread`` (16 rows) and eight more of ``rows``
    rows sent while it is in flight, merged into one backend call; each
    caller gets its own rows."""
    outcomes = concurrent_posts(merging.offloading, path, body, rows)
    statuses = [status for status, _ in outcomes]
    assert statuses == [200] * len(outcomes), [body[:300] for _, body in outcomes]
    first = rows_answered(outcomes[0][1])
    assert first == FIRST_ROWS
    assert [rows_answered(content) for _, content in outcomes[1:]] == [rows] * (
        len(outcomes) - 1
    )


def rows_answered(content: bytes) -> int:
    """The rows of a v1 `:predict` or v2 `infer` answer."""
    document = json.loads(content)
    if "predictions" in document:
        return len(document["predictions"])
    return int(document["outputs"][0]["shape"][0])


def test_a_merged_rest_predict_s_large_answer_does_not_stall_the_gateways_loop(
    merging: MergingGateways,
) -> None:
    """Eight callers' REST bodies merged into one, its JSON answer (32 rows,
    some 40 MB) cut back into theirs."""
    gateway = merging.offloading
    # One row a caller: a 1 MiB-odd merged answer, over the JSON threshold,
    # so the first round starts the JSON workers.
    _merged_rest_round(merging, 1)
    merges = merged_calls(gateway)
    assert_no_stall(
        gateway.url + "/metrics",
        "gateway",
        "gateway, 40 MB merged REST v1 answer cut for 8 callers",
        lambda: _merged_rest_round(merging, 4),
    )
    assert merged_calls(gateway) > merges, "the concurrent calls were not merged"


def test_a_merged_oip_rest_infer_s_large_answers_do_not_stall_the_gateways_loop(
    merging: MergingGateways,
) -> None:
    """Eight OIP REST `infer` calls merged into one backend call (typed
    arrays), each caller's 2 MiB share written as JSON."""
    gateway = merging.offloading

    def round_of(rows: int) -> None:
        _merged_rest_round(merging, rows, "/v2/models/spread/infer", spread_inputs)

    round_of(1)
    merges = merged_calls(gateway)
    assert_no_stall(
        gateway.url + "/metrics",
        "gateway",
        "gateway, 16 MiB merged answer written for 8 OIP REST infer callers",
        lambda: round_of(4),
    )
    assert merged_calls(gateway) > merges, "the concurrent calls were not merged"
