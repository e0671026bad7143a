"""The gateway's admission against hostile callers: keys checked from the headers
before any body byte is read (HTTP v1, typed endpoints, gRPC-Web), failed
attempts rate-limited per client address, and metric labels that made-up model
names cannot grow.
"""

from __future__ import annotations

import socket
import time

import grpc
import httpx
import pytest
from servekit_protocol import grpcweb, messages
from servekit_protocol.services import PredictionServiceStub

from tests.security.stack import (
    AUTH_FAILURE_BURST,
    AUTH_FAILURES_PER_SECOND,
    BODY_TIMEOUT,
    PREDICT_PATH,
    Stack,
    assert_no_traceback,
    timed_predict,
)

pytestmark = pytest.mark.integration

EARLY_ANSWER_SECONDS = 1.0
"""A refusal from the headers comes this fast, well before the body timeout
would end the connection."""
UNKNOWN_NAMES = 200
"""Distinct made-up model names sent."""
METRICS_GROWTH_LIMIT = 4 * 1024
"""Bytes `/metrics` may grow by while they are refused."""


def _refill(stack: Stack) -> None:
    # The address earns its failed attempts back at the configured rate; until
    # then even a valid key from it is refused (429).
    deadline = time.monotonic() + AUTH_FAILURE_BURST / AUTH_FAILURES_PER_SECOND + 5
    while True:
        status, _ = timed_predict(stack.gateway.url, {"x-api-key": stack.keys.admin})
        if status == 200:
            return
        assert status == 429
        assert time.monotonic() < deadline
        time.sleep(0.5)


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        (PREDICT_PATH, "application/json"),
        ("/models/linear/predict", "application/json"),
        ("/tensorflow.serving.PredictionService/Predict", "application/grpc-web+proto"),
    ],
    ids=["v1", "typed", "grpc-web"],
)
def test_a_bad_key_is_refused_before_the_body_is_read(
    listener_stack: Stack, path: str, content_type: str
) -> None:
    _refill(listener_stack)
    gateway = listener_stack.gateway
    sock = socket.create_connection(("127.0.0.1", gateway.http_port), timeout=5)
    started = time.monotonic()
    # Declares 16 MiB and sends none of it: only the headers can be judged.
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
        f"x-api-key: not-a-key\r\nContent-Length: {16 * 1024 * 1024}\r\n\r\n".encode()
    )
    head = b""
    sock.settimeout(BODY_TIMEOUT)
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(65536)
        assert chunk, head
        head += chunk
    answered = time.monotonic() - started
    sock.close()
    assert answered < EARLY_ANSWER_SECONDS, answered
    status = int(head.split(b" ", 2)[1])
    if content_type.startswith("application/grpc-web"):
        assert status == 200
        assert b"grpc-status: 16" in head.lower(), head
    else:
        assert status == 401, head
    _refill(listener_stack)
    assert_no_traceback(gateway.process)


def test_failed_keys_are_rate_limited_per_address(listener_stack: Stack) -> None:
    try:
        _attack_with_bad_keys(listener_stack)
    finally:
        _refill(listener_stack)
    assert_no_traceback(listener_stack.gateway.process)


def _attack_with_bad_keys(listener_stack: Stack) -> None:
    gateway = listener_stack.gateway
    statuses = []
    retry_after = None
    started = time.monotonic()
    for _ in range(int(AUTH_FAILURE_BURST) + 6):
        answer = httpx.post(
            gateway.url + PREDICT_PATH,
            content=b"{}",
            headers={"x-api-key": "guess", "content-type": "application/json"},
            timeout=10,
        )
        statuses.append(answer.status_code)
        if answer.status_code == 429:
            retry_after = answer.headers.get("retry-after")
            assert answer.json()["error"]
    elapsed = time.monotonic() - started
    assert set(statuses) == {401, 429}
    # The burst, plus what the address earned back while the attempts ran (on
    # a loaded machine an attempt can take longer than a token's refill).
    earned = int(elapsed * AUTH_FAILURES_PER_SECOND) + 1
    assert statuses.count(401) <= AUTH_FAILURE_BURST + earned
    # Earlier tests of the session may have used part of the burst.
    assert statuses[0] == 401
    assert retry_after is not None
    assert int(retry_after) >= 1
    # The same address is refused over gRPC too. A token earned back between
    # the last 429 and the call lets one more attempt through (answered
    # UNAUTHENTICATED, using it up again), so a few rounds are allowed.
    codes = []
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        request = messages.PredictRequest()
        request.model_spec.name = "linear"
        for _ in range(5):
            with pytest.raises(grpc.RpcError) as refused:
                PredictionServiceStub(channel).Predict(
                    request, timeout=10, metadata=(("x-api-key", "guess"),)
                )
            codes.append(refused.value.code())
            if codes[-1] is grpc.StatusCode.RESOURCE_EXHAUSTED:
                break
    assert codes[-1] is grpc.StatusCode.RESOURCE_EXHAUSTED, codes


def test_unknown_model_names_do_not_grow_the_metrics(listener_stack: Stack) -> None:
    _refill(listener_stack)
    gateway = listener_stack.gateway
    key = {"x-api-key": listener_stack.keys.admin}
    # Known names (and __unknown__) have their series once the first of each
    # kind of call has been made.
    with httpx.Client(base_url=gateway.url, headers=key, timeout=10) as client:
        assert (
            client.post(
                PREDICT_PATH, content=b'{"instances": [{"a": 1, "b": 2}]}'
            ).status_code
            == 200
        )
        client.post("/v1/models/warmup-unknown:predict", content=b"{}")
        client.get("/v1/models/warmup-unknown")
        before = len(httpx.get(gateway.url + "/metrics", timeout=10).content)
        for index in range(UNKNOWN_NAMES):
            name = f"made-up-{index}-" + "x" * 200
            answer = client.post(
                f"/v1/models/{name}:predict",
                content=b'{"instances": [1]}',
                headers={"content-type": "application/json"},
            )
            assert answer.status_code == 404, answer.text
            assert client.get(f"/v1/models/{name}").status_code == 404
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        stub = PredictionServiceStub(channel)
        for index in range(20):
            request = messages.PredictRequest()
            request.model_spec.name = f"grpc-made-up-{index}"
            with pytest.raises(grpc.RpcError) as refused:
                stub.Predict(request, timeout=10, metadata=tuple(key.items()))
            assert refused.value.code() is grpc.StatusCode.NOT_FOUND
    text = httpx.get(gateway.url + "/metrics", timeout=10).text
    assert "made-up" not in text
    assert len(text.encode()) - before < METRICS_GROWTH_LIMIT
    assert 'model="linear"' in text
    assert_no_traceback(gateway.process)


def test_grpc_web_without_a_key_is_refused_with_its_status(
    listener_stack: Stack,
) -> None:
    _refill(listener_stack)
    gateway = listener_stack.gateway
    answer = httpx.post(
        gateway.url + "/tensorflow.serving.PredictionService/Predict",
        content=grpcweb.frame(b""),
        headers={"content-type": "application/grpc-web+proto"},
        timeout=10,
    )
    status = answer.headers.get("grpc-status")
    if status is None:
        _, trailers = grpcweb.response_parts(answer.content)
        status = trailers.get("grpc-status")
    assert status == str(grpc.StatusCode.UNAUTHENTICATED.value[0])
    _refill(listener_stack)
