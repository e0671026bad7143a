"""A backend that never answers, or answers without end, holds the gateway's
HTTP/2 client (``--backend-grpc-client h2``) only as long as the call's
deadline or the answer cap (``--backend-max-answer-bytes``) allows: the
client's call ends with the mapped status, the backend sees its stream reset
(CANCEL), and the gateway stays up (:mod:`tests.security.hostile_backend`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import httpx
import pytest
from h2.errors import ErrorCodes

from tests.security.h2_backend_stack import line_predict
from tests.security.hostile_backend import (
    SPACED_MESSAGE,
    HostileBackend,
    hostile_backend,
)
from tests.security.recording import PREDICT
from tests.security.stack import assert_no_traceback
from tests.support.gateway import GatewayProcess, running_gateway

pytestmark = pytest.mark.integration

ANSWER_CAP = 8 * 1024 * 1024
"""The gateway's answer cap here."""
DEADLINE_SECONDS = 2.0
"""The calls' deadline."""
SETTLE_SECONDS = 10.0
"""How long the backend may take to see a reset after the call ended: the
reset is written as the gateway gives up; the rest is margin for a loaded
machine."""


@dataclass(frozen=True)
class HostileStack:
    backend: HostileBackend
    gateway: GatewayProcess


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileStack]:
    folder = tmp_path_factory.mktemp("hostile-backend")
    with (
        hostile_backend() as backend,
        running_gateway(
            folder / "gateway",
            env={"GATEWAY_REGISTRY": str(folder / "models")},
            flags=[
                f"--default-backend={backend.target}",
                "--backend-grpc-client=h2",
                f"--backend-max-answer-bytes={ANSWER_CAP}",
                "--retries=0",
            ],
        ) as gateway,
    ):
        yield HostileStack(backend, gateway)
        assert_no_traceback(gateway.process)


def _call(gateway: GatewayProcess, mode: str) -> tuple[grpc.StatusCode, float]:
    """A Predict sent with request id ``mode``: its status and how long it took."""
    started = time.monotonic()
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        try:
            channel.unary_unary(PREDICT)(
                line_predict(4),
                timeout=DEADLINE_SECONDS,
                metadata=(("x-request-id", mode),),
            )
        except grpc.RpcError as exc:
            return exc.code(), time.monotonic() - started
    return grpc.StatusCode.OK, time.monotonic() - started


def _reset_seen(backend: HostileBackend, mode: str) -> int:
    deadline = time.monotonic() + SETTLE_SECONDS
    while mode not in backend.resets:
        assert time.monotonic() < deadline, f"the {mode} stream was not reset"
        time.sleep(0.05)
    return backend.resets[mode]


@pytest.mark.parametrize(
    ("mode", "code"),
    [
        ("silent", grpc.StatusCode.DEADLINE_EXCEEDED),
        ("huge", grpc.StatusCode.RESOURCE_EXHAUSTED),
        ("endless", grpc.StatusCode.INTERNAL),
    ],
)
def test_a_hostile_answer_is_bounded(
    stack: HostileStack, mode: str, code: grpc.StatusCode
) -> None:
    status, _ = _call(stack.gateway, mode)
    assert status is code
    assert _reset_seen(stack.backend, mode) == ErrorCodes.CANCEL
    # Whatever the backend still sent, the gateway read no more than its cap.
    assert httpx.get(stack.gateway.url + "/healthz", timeout=10).status_code == 200


def test_an_endless_answer_stops_at_the_message_it_announced(
    stack: HostileStack,
) -> None:
    _call(stack.gateway, "endless")
    sent = stack.backend.sent["endless"]
    # The reset comes once the 1 MiB message is followed by more bytes; the
    # backend may have sent up to the windows (4 MiB a stream) meanwhile.
    assert sent < 1024 * 1024 + 16 * 1024 * 1024, sent


def test_a_status_message_with_surrounding_spaces_is_passed_on(
    stack: HostileStack,
) -> None:
    # Twice: the first answer must leave the connection usable.
    for _ in range(2):
        with (
            grpc.insecure_channel(stack.gateway.grpc_target) as channel,
            pytest.raises(grpc.RpcError) as failed,
        ):
            channel.unary_unary(PREDICT)(
                line_predict(4),
                timeout=DEADLINE_SECONDS,
                metadata=(("x-request-id", "spaced"),),
            )
        assert failed.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert SPACED_MESSAGE.strip() in (failed.value.details() or "")
    log = stack.gateway.process.log_path.read_text()
    assert "protocol error" not in log
