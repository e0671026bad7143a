"""Large answers of merged gRPC Predicts, cut for their callers off the event
loop, reach each caller with the bytes the gateway wrote when it cut them on
the loop.

Concurrent Predicts of one model and input layout are merged into one backend
call and the answer is cut back by rows (``gateway.clients.coalescer``). From
``--grpc-parse-offload-bytes`` (1 MiB) up the merged answer is received as its
bytes and parsed, cut and each share serialized in a worker thread; below it,
or with the threshold at 0, all of that happens on the event loop. Two
gateways in front of one model server (:mod:`tests.security.merging_stack`),
one with each setting, must answer the same concurrent callers with equal
status and bytes, each caller's values its own rows of the model's answer,
and both must have merged the calls.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
import numpy as np
import pytest
from servekit_protocol import messages
from servekit_protocol import oip_messages as oip

from tests.security.forwarding_stack import grpc_call
from tests.security.merging_stack import (
    CALLER_ROWS,
    MESSAGE_LIMIT,
    SPREAD_OUTPUTS,
    MergingGateways,
    concurrent_calls,
    concurrent_predicts,
    merged_calls,
    spread_infer,
    spread_request,
)
from tests.security.recording import PREDICT
from tests.security.test_gateway_large_grpc import MODEL_INFER

pytestmark = pytest.mark.integration

ROUNDS = 2
"""Rounds of concurrent calls to each gateway: the calls merge in each one
that finds the first call in flight, so two make a merge all but certain; at
least one merge is asserted."""


def _direct_values(merging: MergingGateways, caller: int) -> np.ndarray:
    """The model server's own answer to caller ``caller``'s request, as values."""
    options = [("grpc.max_receive_message_length", MESSAGE_LIMIT)]
    with grpc.insecure_channel(merging.server.grpc_target, options=options) as channel:
        data = channel.unary_unary(PREDICT)(spread_request(caller), timeout=60)
    return _values(data)


def _values(data: bytes) -> np.ndarray:
    predictions = messages.PredictResponse.FromString(data).outputs["predictions"]
    dims = [dim.size for dim in predictions.tensor_shape.dim]
    assert dims == [CALLER_ROWS, SPREAD_OUTPUTS]
    return np.asarray(predictions.double_val).reshape(dims)


def test_merged_large_answers_are_the_bytes_cut_on_the_loop(
    merging: MergingGateways,
) -> None:
    merges = {
        name: merged_calls(gateway)
        for name, gateway in (
            ("offloading", merging.offloading),
            ("parsing", merging.parsing),
        )
    }
    for _ in range(ROUNDS):
        offloaded = concurrent_predicts(merging.offloading)
        parsed = concurrent_predicts(merging.parsing)
        assert [status for status, _ in offloaded] == ["OK"] * len(offloaded)
        assert offloaded == parsed
    assert merged_calls(merging.offloading) > merges["offloading"]
    assert merged_calls(merging.parsing) > merges["parsing"]
    for caller in (1, 2, len(offloaded) - 1):
        answer = messages.PredictResponse.FromString(offloaded[caller][1])
        assert answer.model_spec.name == "spread"
        assert answer.model_spec.version.value == 1
        np.testing.assert_array_equal(
            _values(offloaded[caller][1]), _direct_values(merging, caller)
        )


def test_a_merged_call_s_error_is_every_caller_s_on_both_gateways(
    merging: MergingGateways,
) -> None:
    """A version the model does not have: the backend's NOT_FOUND for the
    merged call, handed to each caller the same way by both gateways."""
    offloaded = concurrent_predicts(merging.offloading, version=9)
    parsed = concurrent_predicts(merging.parsing, version=9)
    assert offloaded == parsed
    assert all(status.startswith("NOT_FOUND") for status, _ in offloaded), offloaded


def test_a_small_model_infer_s_large_answer_is_the_one_written_on_the_loop(
    merging: MergingGateways,
) -> None:
    """An 8-row typed ModelInfer's 4 MiB answer, written off the loop by one
    gateway and on it by the other: the same bytes."""
    offloaded = grpc_call(merging.offloading, spread_infer(8), MODEL_INFER)
    parsed = grpc_call(merging.parsing, spread_infer(8), MODEL_INFER)
    assert offloaded[0] == "OK", offloaded[1]
    assert offloaded == parsed
    answer = oip.ModelInferResponse.FromString(offloaded[2])
    assert list(answer.outputs[0].shape) == [8, SPREAD_OUTPUTS]
    assert len(answer.outputs[0].contents.fp64_contents) == 8 * SPREAD_OUTPUTS


def _raw_infer(caller: int, rows: int) -> bytes:
    """`spread_infer` with the values in ``raw_input_contents`` (answered
    raw)."""
    request = oip.ModelInferRequest.FromString(spread_infer(rows, caller))
    values = np.asarray(request.inputs[0].contents.fp64_contents, dtype="<f8")
    request.inputs[0].ClearField("contents")
    request.raw_input_contents.append(values.tobytes())
    return request.SerializeToString()


def _typed_infer(caller: int, rows: int) -> bytes:
    return spread_infer(rows, caller)


def _infer_values(data: bytes) -> np.ndarray:
    answer = oip.ModelInferResponse.FromString(data)
    output = answer.outputs[0]
    assert list(output.shape) == [CALLER_ROWS, SPREAD_OUTPUTS]
    if answer.raw_output_contents:
        values = np.frombuffer(answer.raw_output_contents[0], dtype="<f8")
    else:
        values = np.asarray(output.contents.fp64_contents)
    return values.reshape(CALLER_ROWS, SPREAD_OUTPUTS)


@pytest.mark.parametrize("request_of", [_typed_infer, _raw_infer])
def test_merged_model_infer_answers_are_the_bytes_written_on_the_loop(
    merging: MergingGateways, request_of: Callable[[int, int], bytes]
) -> None:
    """Concurrent ModelInfers merged into one backend call: each caller's
    2 MiB share written in a thread by one gateway and on the loop by the
    other, the same bytes, its values the model server's answer to its own
    rows."""
    merges = {
        name: merged_calls(gateway)
        for name, gateway in (
            ("offloading", merging.offloading),
            ("parsing", merging.parsing),
        )
    }
    for _ in range(ROUNDS):
        offloaded = concurrent_calls(merging.offloading, MODEL_INFER, request_of)
        parsed = concurrent_calls(merging.parsing, MODEL_INFER, request_of)
        assert [status for status, _ in offloaded] == ["OK"] * len(offloaded)
        assert offloaded == parsed
    assert merged_calls(merging.offloading) > merges["offloading"]
    assert merged_calls(merging.parsing) > merges["parsing"]
    for caller in (1, 2, len(offloaded) - 1):
        answer = oip.ModelInferResponse.FromString(offloaded[caller][1])
        assert answer.model_name == "spread"
        assert answer.model_version == "1"
        assert bool(answer.raw_output_contents) == (request_of is _raw_infer)
        np.testing.assert_array_equal(
            _infer_values(offloaded[caller][1]), _direct_values(merging, caller)
        )
