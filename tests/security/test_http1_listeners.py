"""Hostile HTTP/1.1 clients against the model server's REST port and the gateway's
HTTP port: idle and slow-header (slowloris) connections, slow bodies, idle
keep-alive connections, oversized headers and connection floods.

Each attack is bounded in count and time; each test asserts the bounded effect:
connections closed (or answered 408/431/503 with an ``{"error"}`` body) within the
configured timeout plus :data:`SLACK`, memory growth of the server process under a
stated figure, a normal call answered meanwhile, and no traceback in the log.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.security.figures import record
from tests.security.stack import (
    BODY_TIMEOUT,
    HEADER_TIMEOUT,
    IDLE_TIMEOUT,
    MAX_CONNECTIONS,
    MAX_HEADER_BYTES,
    PREDICT_BODY,
    PREDICT_PATH,
    SLACK,
    Listener,
    Stack,
    assert_no_traceback,
    read_response,
    read_until_closed,
    rss_bytes,
    timed_predict,
)

pytestmark = pytest.mark.integration

ATTACKERS = 48
"""Idle or trickling connections opened per attack (below MAX_CONNECTIONS)."""
MEMORY_GROWTH_LIMIT = 24 * 1024 * 1024
"""Resident memory a listener may gain while holding the attackers."""
NORMAL_CALL_LATENCY = 2.0
"""Seconds a normal call may take while an attack runs (a loaded 2-core machine;
unprotected, it never completes once the connections run out)."""


@pytest.fixture(params=["model server REST", "gateway HTTP"])
def listener(listener_stack: Stack, request: pytest.FixtureRequest) -> Listener:
    return next(
        each for each in listener_stack.listeners() if each.name == request.param
    )


def _error_of(answer: bytes) -> tuple[int, str]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)["error"]


def test_idle_and_slowloris_connections_are_closed_in_the_header_timeout(
    listener: Listener,
) -> None:
    before = rss_bytes(listener.process.pid)
    opened = time.monotonic()
    idle = [listener.connect() for _ in range(ATTACKERS // 2)]
    trickling = [listener.connect() for _ in range(ATTACKERS // 2)]
    for sock in trickling:
        sock.sendall(b"GET /v1/models/linear HTTP/1.1\r\nHost: x\r\n")
    # While they trickle a header line every 0.2 s, a normal client is served.
    status, seconds = timed_predict(listener.url, listener.headers)
    assert status == 200
    assert seconds < NORMAL_CALL_LATENCY
    grown = rss_bytes(listener.process.pid) - before
    record("VmRSS growth MiB", grown / 1024 / 1024)
    assert grown < MEMORY_GROWTH_LIMIT, grown
    deadline = opened + HEADER_TIMEOUT + SLACK
    answers: list[bytes] = []
    for _ in range(int((HEADER_TIMEOUT + SLACK) / 0.2)):
        for sock in trickling:
            try:
                sock.sendall(b"X-Slow: 1\r\n")
            except OSError:
                continue
        time.sleep(0.2)
        if time.monotonic() > deadline:
            break
    for sock in trickling:
        received, _ = read_until_closed(sock, deadline + SLACK)
        answers.append(received)
        sock.close()
    for sock in idle:
        received, _ = read_until_closed(sock, deadline)
        # Nothing was asked: nothing is answered, the connection just closes.
        assert received == b""
        sock.close()
    # A trickler whose close raced its last header line may see a reset instead.
    statuses = [_error_of(answer)[0] for answer in answers if answer]
    assert statuses, "no trickling connection got an answer"
    assert set(statuses) == {408}
    assert "no complete request headers" in listener.process.log_text()
    assert_no_traceback(listener.process)


def test_a_trickled_body_gets_408_in_the_body_timeout(listener: Listener) -> None:
    socks = [listener.connect() for _ in range(8)]
    started = time.monotonic()
    for sock in socks:
        sock.sendall(
            f"POST {PREDICT_PATH} HTTP/1.1\r\nHost: x\r\n"
            "Content-Type: application/json\r\nContent-Length: 4096\r\n".encode()
            + listener.header_lines
            + b"\r\n"
            + PREDICT_BODY[:8]
        )
    while time.monotonic() - started < BODY_TIMEOUT + SLACK:
        for sock in socks:
            try:
                sock.sendall(b" ")
            except OSError:
                continue
        time.sleep(0.25)
    status, seconds = timed_predict(listener.url, listener.headers)
    assert status == 200
    assert seconds < NORMAL_CALL_LATENCY
    for sock in socks:
        received, closed = read_until_closed(sock, started + BODY_TIMEOUT + 2 * SLACK)
        sock.close()
        assert closed - started >= BODY_TIMEOUT - 0.1
        status_code, message = _error_of(received)
        assert status_code == 408
        assert "body not received" in message
    assert_no_traceback(listener.process)


def test_an_idle_keep_alive_connection_is_closed(listener: Listener) -> None:
    sock = listener.connect()
    # The idle timer starts once the answer is written, after this.
    sent = time.monotonic()
    sock.sendall(
        f"POST {PREDICT_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
        f"\r\nContent-Length: {len(PREDICT_BODY)}\r\n".encode()
        + listener.header_lines
        + b"\r\n"
        + PREDICT_BODY
    )
    first = read_response(sock)
    assert first.startswith(b"HTTP/1.1 200 ")
    answered = time.monotonic()
    received, closed = read_until_closed(sock, answered + IDLE_TIMEOUT + SLACK)
    sock.close()
    assert received == b""
    assert closed - sent >= IDLE_TIMEOUT - 0.05


def test_oversized_headers_get_431(listener: Listener) -> None:
    for size, in_one_write in ((MAX_HEADER_BYTES + 4096, True), (256 * 1024, False)):
        sock = listener.connect()
        request = (
            b"GET /v1/models/linear HTTP/1.1\r\nHost: x\r\nX-Big: "
            + b"a" * size
            + b"\r\n\r\n"
        )
        if in_one_write:
            sock.sendall(request)
        else:
            # Without an end of headers: refused once the cap is passed, without
            # waiting for the rest.
            try:
                for start in range(0, len(request) - 4, 8192):
                    sock.sendall(request[start : start + 8192])
            except OSError:
                pass
        received, _ = read_until_closed(sock, time.monotonic() + 5)
        sock.close()
        status, message = _error_of(received)
        assert status == 431
        assert str(MAX_HEADER_BYTES) in message
    # Large but within the cap: served.
    with socket.create_connection(("127.0.0.1", listener.port), timeout=5) as sock:
        sock.sendall(
            b"GET /v1/models/linear HTTP/1.1\r\nHost: x\r\n"
            + listener.header_lines
            + b"X-Big: "
            + b"a" * (MAX_HEADER_BYTES - 1024)
            + b"\r\n\r\n"
        )
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")
    assert_no_traceback(listener.process)


def test_connections_above_the_cap_are_refused_at_once(listener: Listener) -> None:
    held = [listener.connect() for _ in range(MAX_CONNECTIONS)]
    extra = [listener.connect() for _ in range(16)]
    refused_at = time.monotonic()
    try:
        for sock in extra:
            # Answered and closed at once, long before the header timeout would.
            received, closed = read_until_closed(sock, refused_at + HEADER_TIMEOUT)
            assert received.startswith(b"HTTP/1.1 503 "), received
            assert closed - refused_at < HEADER_TIMEOUT
    finally:
        for sock in held + extra:
            sock.close()
    deadline = time.monotonic() + 5
    while "refused a connection" not in listener.process.log_text():
        assert time.monotonic() < deadline, listener.process.log_tail()
        time.sleep(0.1)
    # Only a few lines for the 16 refusals: the log is throttled.
    refusals = listener.process.log_text().count("refused a connection")
    assert refusals <= 3
    # Once the flood is gone, clients are served again.
    time.sleep(0.2)
    status, seconds = timed_predict(listener.url, listener.headers)
    assert status == 200
    assert seconds < NORMAL_CALL_LATENCY
    assert_no_traceback(listener.process)
