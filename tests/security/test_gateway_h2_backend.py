"""The gateway's HTTP/2 client for plain-gRPC backends (``--backend-grpc-client
h2``, the default, :mod:`gateway.clients.h2grpc`) against grpcio's, on the
gateways of :mod:`tests.security.h2_backend_stack`: the same answers byte for
byte, the same status codes for the same errors, recovery after the backend
restarts, and a 64 MiB answer read without holding the event loop over the
50 ms limit (grpc.aio's receive held it 85-100 ms; measured here as well, as a
figure, and not asserted).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from servekit_protocol import messages

from tests.security.figures import record
from tests.security.forwarding_stack import Outcome, grpc_call
from tests.security.h2_backend_stack import (
    BACKEND_STREAMS,
    H2Stack,
    classify_request,
    h2_stack,
    line_infer,
    line_predict,
)
from tests.security.loopstall import assert_no_stall, stretches_of
from tests.security.recording import PREDICT
from tests.security.test_examples_limits import SERVICE
from tests.security.test_gateway_large_grpc import MODEL_INFER

pytestmark = pytest.mark.integration

CLASSIFY = SERVICE + "Classify"
LARGE_ROWS = 8 * 1024 * 1024 - 16
"""Rows of the large answer: 64 MiB of float64 values, less 128 bytes so that
the answer fits the test client's 64 MiB receive limit."""
RECOVERY_SECONDS = 30.0
"""How long the gateway may take to call a restarted backend again: the
reconnect backoff is at most 1 s and an open circuit probes after 2 s; the
rest is margin for a loaded machine."""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[H2Stack]:
    with h2_stack(tmp_path_factory.mktemp("h2-backend")) as running:
        yield running


def _both(stack: H2Stack, data: bytes, method: str) -> tuple[Outcome, Outcome]:
    return grpc_call(stack.grpcio, data, method), grpc_call(stack.h2, data, method)


@pytest.mark.parametrize(
    ("method", "data"),
    [
        (PREDICT, line_predict(4)),
        (PREDICT, line_predict(300_000)),
        (CLASSIFY, classify_request(20)),
        (MODEL_INFER, line_infer(1_000)),
    ],
    ids=["predict", "predict-2mib-answer", "classify", "model-infer"],
)
def test_both_clients_give_the_same_answer_bytes(
    stack: H2Stack, method: str, data: bytes
) -> None:
    via_grpcio, via_h2 = _both(stack, data, method)
    assert via_grpcio[0] == "OK", via_grpcio[1]
    assert via_h2 == via_grpcio


@pytest.mark.parametrize(
    ("method", "data", "code"),
    [
        (PREDICT, line_predict(4, model="nonexistent"), "NOT_FOUND"),
        (PREDICT, line_predict(4, name="not_an_input"), "INVALID_ARGUMENT"),
    ],
    ids=["unknown-model", "bad-input"],
)
def test_both_clients_give_the_same_error(
    stack: H2Stack, method: str, data: bytes, code: str
) -> None:
    via_grpcio, via_h2 = _both(stack, data, method)
    assert via_grpcio[0] == code, via_grpcio
    assert via_h2[:2] == via_grpcio[:2]


CONCURRENT_CALLS = 4 * BACKEND_STREAMS
"""Calls made at once: four times the backend's stream limit."""


def test_concurrent_calls_beyond_the_backends_stream_limit_all_succeed(
    stack: H2Stack,
) -> None:
    """Each call's 2 MiB answer keeps its stream open a while, so the calls
    overlap at the backend; a stream over its limit would be refused and
    retried (UNAVAILABLE), which the retry counter would show."""
    data = line_predict(262_144)
    retries = stack.h2.metric("gateway_backend_retries_total")
    with ThreadPoolExecutor(CONCURRENT_CALLS) as pool:
        outcomes = list(
            pool.map(
                lambda _: grpc_call(stack.h2, data, PREDICT), range(CONCURRENT_CALLS)
            )
        )
    assert {status for status, _, _ in outcomes} == {"OK"}, outcomes[:3]
    assert len({answer for _, _, answer in outcomes}) == 1
    assert stack.h2.metric("gateway_backend_retries_total") == retries


def test_a_64_mib_answer_does_not_stall_the_gateways_loop(stack: H2Stack) -> None:
    def call(gateway_h2: bool) -> None:
        gateway = stack.h2 if gateway_h2 else stack.grpcio
        status, message, answer = grpc_call(gateway, line_predict(LARGE_ROWS), PREDICT)
        assert status == "OK", message
        predictions = messages.PredictResponse.FromString(answer).outputs
        assert len(predictions["predictions"].double_val) == LARGE_ROWS

    # A first, smaller call of each starts what large answers need (threads).
    for gateway_h2 in (False, True):
        status, message, _ = grpc_call(
            stack.h2 if gateway_h2 else stack.grpcio, line_predict(1 << 18), PREDICT
        )
        assert status == "OK", message
    busy, lag = stretches_of(
        stack.grpcio.url + "/metrics", "gateway", lambda: call(False)
    )
    record("gateway, 64 MiB answer over grpc.aio: longest loop CPU stretch s", busy)
    record("gateway, 64 MiB answer over grpc.aio: longest loop lag s", lag)
    assert_no_stall(
        stack.h2.url + "/metrics",
        "gateway",
        "gateway, 64 MiB answer from a plain-gRPC backend over h2",
        lambda: call(True),
    )


def test_a_killed_backend_is_unavailable_then_found_again(stack: H2Stack) -> None:
    """Last in the module: the backend is killed and started again."""
    data = line_predict(4)
    expected = grpc_call(stack.grpcio, data, PREDICT)
    assert expected[0] == "OK", expected[1]
    stack.server.kill()
    try:
        for gateway in (stack.grpcio, stack.h2):
            status, message, _ = grpc_call(gateway, data, PREDICT, timeout=20)
            assert status == "UNAVAILABLE", (status, message)
    finally:
        stack.server.start()
    for gateway in (stack.grpcio, stack.h2):
        deadline = time.monotonic() + RECOVERY_SECONDS
        while True:
            outcome = grpc_call(gateway, data, PREDICT, timeout=20)
            if outcome[0] == "OK":
                break
            assert time.monotonic() < deadline, outcome
            time.sleep(0.2)
        assert outcome == expected
