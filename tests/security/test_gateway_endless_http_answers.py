"""A backend answering over HTTP/1.1 (gRPC-Web, forwarded REST) without end:
the gateway stops reading at ``--backend-max-answer-bytes`` and answers
RESOURCE_EXHAUSTED, as grpcio and its HTTP/2 client do for a message over
their limit, long before the call's deadline; it closes the connection (the
backend sees it), and keeps answering.

Without the cap, the gateway buffered the body until the deadline: here the
backend stops at 256 MiB and waits, so such a call held 256 MiB and ended
DEADLINE_EXCEEDED after its whole deadline.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from servekit_protocol import messages

from tests.security.forwarding_stack import grpc_call
from tests.security.recording import PREDICT
from tests.security.stack import assert_no_traceback
from tests.support.gateway import GatewayProcess, running_gateway
from tests.support.processes import free_port
from tests.support.rest_backends import EndlessBackend, serving

pytestmark = pytest.mark.integration

ANSWER_CAP = 8 * 1024 * 1024
"""The gateway's ``--backend-max-answer-bytes`` here."""
DEADLINE_SECONDS = 30.0
"""The calls' deadline: what an unbounded read waits out."""
REFUSED_WITHIN = DEADLINE_SECONDS / 2
"""The refusal comes after 8 MiB over loopback (well under a second on an
idle machine); half the deadline leaves a loaded CI machine its margin and
still tells the cap from the deadline."""
SENT_AT_MOST = 4 * ANSWER_CAP
"""What the backend may have written when it saw the connection closed: the
cap and what loopback's socket buffers held besides."""


@dataclass(frozen=True)
class EndlessStack:
    backend: EndlessBackend
    gateway: GatewayProcess


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EndlessStack]:
    folder = tmp_path_factory.mktemp("endless-answers")
    registry = folder / "models"
    registry.mkdir()
    with serving(EndlessBackend()) as backend:
        assert isinstance(backend, EndlessBackend)
        grpc_target = f"127.0.0.1:{free_port()}"
        env = {
            "GATEWAY_REGISTRY": str(registry),
            "GATEWAY_DEFAULT_BACKEND": grpc_target,
            "GATEWAY_REST_BACKENDS": json.dumps({grpc_target: backend.address}),
        }
        flags = [f"--backend-max-answer-bytes={ANSWER_CAP}"]
        with running_gateway(folder / "gateway", env=env, flags=flags) as gateway:
            yield EndlessStack(backend, gateway)
            assert_no_traceback(gateway.process)


def _sent_once_closed(backend: EndlessBackend, calls: int) -> int:
    """The bytes the ``calls``-th answer sent, once the backend saw its
    connection closed (it records nothing before)."""
    deadline = time.monotonic() + REFUSED_WITHIN
    while len(backend.sent) < calls:
        assert time.monotonic() < deadline, "the backend's connection stayed open"
        time.sleep(0.05)
    return backend.sent[calls - 1]


def _predict() -> bytes:
    request = messages.PredictRequest()
    request.model_spec.name = "endless"
    tensor = request.inputs["x"]
    tensor.dtype = messages.DT_DOUBLE
    tensor.tensor_shape.dim.add(size=1)
    tensor.double_val.append(1.0)
    return request.SerializeToString()


def test_an_endless_grpc_web_answer_is_resource_exhausted(
    stack: EndlessStack,
) -> None:
    calls = len(stack.backend.sent)
    started = time.monotonic()
    status, message, _ = grpc_call(
        stack.gateway, _predict(), PREDICT, timeout=DEADLINE_SECONDS
    )
    took = time.monotonic() - started
    assert status == "RESOURCE_EXHAUSTED", message
    assert str(ANSWER_CAP) in message, message
    assert took < REFUSED_WITHIN
    assert _sent_once_closed(stack.backend, calls + 1) < SENT_AT_MOST


def test_an_endless_rest_answer_is_refused(stack: EndlessStack) -> None:
    calls = len(stack.backend.sent)
    started = time.monotonic()
    response = httpx.post(
        stack.gateway.url + "/v1/models/endless:predict",
        json={"instances": [[1.0]]},
        timeout=DEADLINE_SECONDS * 2,
    )
    took = time.monotonic() - started
    assert response.status_code == 429, response.text
    assert str(ANSWER_CAP) in response.json()["error"], response.text
    assert took < REFUSED_WITHIN
    assert _sent_once_closed(stack.backend, calls + 1) < SENT_AT_MOST


def test_the_gateway_answers_after_endless_answers(stack: EndlessStack) -> None:
    assert httpx.get(stack.gateway.url + "/healthz", timeout=10).status_code == 200
    status, _, _ = grpc_call(stack.gateway, _predict(), PREDICT, timeout=10)
    assert status == "RESOURCE_EXHAUSTED"
