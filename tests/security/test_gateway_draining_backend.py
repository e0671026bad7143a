"""A backend that drains its connection (GOAWAY with a last stream id) while
the gateway's HTTP/2 client (``--backend-grpc-client h2``) has calls under
way on it: the calls up to the last stream id get their answers, even the
frames that come in the same read as the GOAWAY; the calls above it are sent
again on a new connection by the client itself (the pool's retries are off
here, so no retry of the pool hides a failure); new calls go to a new
connection; the drained connection is closed by the client once its last
call is answered; no call waits for its deadline
(:mod:`tests.security.draining_backend`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from servekit_protocol import messages

from tests.security.draining_backend import (
    PADDING_BYTES,
    DrainingBackend,
    draining_backend,
)
from tests.security.h2_backend_stack import line_predict
from tests.security.recording import PREDICT
from tests.security.stack import assert_no_traceback
from tests.support.gateway import GatewayProcess, running_gateway

pytestmark = pytest.mark.integration

CALLS = 6
"""Calls under way on the connection when it drains."""
DEADLINE_SECONDS = 20.0
"""The calls' deadline: a call that waited for it would take this long."""
PROMPT_SECONDS = DEADLINE_SECONDS / 2
"""Longest time the drained calls may take: they need no more than a few
round trips on loopback; half the deadline is margin for a loaded machine
while still telling an answer from a wait for the deadline."""


@dataclass(frozen=True)
class DrainStack:
    backend: DrainingBackend
    gateway: GatewayProcess


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[DrainStack]:
    with (
        draining_backend(hold=CALLS) as backend,
        running_gateway(
            tmp_path / "gateway",
            env={"GATEWAY_REGISTRY": str(tmp_path / "models")},
            flags=[
                f"--default-backend={backend.target}",
                "--backend-grpc-client=h2",
                "--retries=0",
                # Every Predict its own backend call, so that concurrent ones
                # are concurrent streams of one connection.
                "--coalesce-max-rows=0",
            ],
        ) as gateway,
    ):
        yield DrainStack(backend, gateway)
        assert_no_traceback(gateway.process)


def _predict(gateway: GatewayProcess, request_id: str) -> tuple[str, bytes]:
    """A Predict sent with ``request_id``: its status name and its ``id``
    output."""
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        try:
            answer = channel.unary_unary(PREDICT)(
                line_predict(4),
                timeout=DEADLINE_SECONDS,
                metadata=(("x-request-id", request_id),),
            )
        except grpc.RpcError as exc:
            return exc.code().name, b""
    response = messages.PredictResponse.FromString(answer)
    return "OK", response.outputs["id"].string_val[0]


def test_calls_on_a_draining_connection_are_answered_or_sent_again(
    stack: DrainStack,
) -> None:
    ids = [f"drain-{n}" for n in range(CALLS)]
    started = time.monotonic()
    with ThreadPoolExecutor(CALLS) as pool:
        results = dict(
            zip(ids, pool.map(lambda i: _predict(stack.gateway, i), ids), strict=True)
        )
    took = time.monotonic() - started

    backend = stack.backend
    assert results == {i: ("OK", i.encode() + bytes(PADDING_BYTES)) for i in ids}, (
        "every caller gets its own answer"
    )
    assert took < PROMPT_SECONDS, took
    drained = backend.drained_on
    assert drained is not None
    unanswered = set(backend.unanswered)
    # The middle call's stream is the last one: the ones up to it answered on
    # the drained connection, the others on another one, each exactly once.
    assert len(unanswered) == CALLS // 2, backend.unanswered
    assert {i for i in ids if backend.answered_on[i] == drained} == (
        set(ids) - unanswered
    )
    assert all(backend.answered_on[i] != drained for i in unanswered)
    assert backend.late == [], "no stream opened after the GOAWAY"
    # Nothing is left on the drained connection: the client closes it.
    assert backend.drained_closed.wait(PROMPT_SECONDS)
    assert stack.gateway.metric("gateway_backend_retries_total") == 0

    # A new call goes to a new connection and is answered.
    assert _predict(stack.gateway, "after") == (
        "OK",
        b"after" + bytes(PADDING_BYTES),
    )
    assert backend.answered_on["after"] != drained
