"""How the HTTP/1.1 listeners frame their answers and treat gRPC-Web metadata,
read with a raw socket so that nothing between the test and the server fixes
them up.

TF Serving sends every REST answer with a ``Content-Length``; an ASGI server
chunks an answer that declares no length, which costs a client a chunk parser
and hides the size from proxies. Malformed ``-bin`` metadata over gRPC-Web is
the same client mistake as over gRPC: INVALID_ARGUMENT, one log line, no
traceback.
"""

from __future__ import annotations

import time

import pytest
from servekit_protocol import grpcweb, messages

from tests.security.stack import (
    PREDICT_BODY,
    PREDICT_PATH,
    Listener,
    Stack,
    assert_no_traceback,
    read_response,
)

pytestmark = pytest.mark.integration

PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"


@pytest.fixture(params=["model server REST", "gateway HTTP"])
def listener(listener_stack: Stack, request: pytest.FixtureRequest) -> Listener:
    return next(
        each for each in listener_stack.listeners() if each.name == request.param
    )


def _exchange(
    listener: Listener, request: bytes
) -> tuple[int, dict[bytes, bytes], bytes]:
    """One request on a fresh connection: status, headers (lower-case names;
    a repeated one fails the test) and body of the answer."""
    with listener.connect() as sock:
        sock.sendall(request)
        answer = read_response(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        key = name.strip().lower()
        assert key not in headers, f"{key!r} sent twice: {head!r}"
        headers[key] = value.strip()
    return int(lines[0].split(b" ", 2)[1]), headers, body


def _request(listener: Listener, method: str, path: str, body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
    if body or method == "POST":
        head += b"Content-Type: application/json\r\n"
        head += f"Content-Length: {len(body)}\r\n".encode()
    return head + listener.header_lines + b"\r\n" + body


def _grpc_web_request(
    listener: Listener, payload: bytes, extra: tuple[tuple[str, str], ...] = ()
) -> bytes:
    lines = "".join(f"{name}: {value}\r\n" for name, value in extra)
    head = (
        f"POST {PREDICT_METHOD} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/grpc-web+proto\r\n"
        f"Content-Length: {len(payload)}\r\n{lines}"
    ).encode()
    return head + listener.header_lines + b"\r\n" + payload


def _predict_message() -> bytes:
    request = messages.PredictRequest()
    request.model_spec.name = "linear"
    for name, value in (("a", 1.0), ("b", 2.0)):
        tensor = request.inputs[name]
        tensor.dtype = messages.DataType.DT_DOUBLE
        tensor.tensor_shape.dim.add(size=1)
        tensor.double_val.append(value)
    return grpcweb.frame(request.SerializeToString())


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", PREDICT_PATH, PREDICT_BODY, 200),
        ("GET", "/v1/models/linear", b"", 200),
        ("GET", "/v1/models/linear/metadata", b"", 200),
        ("POST", PREDICT_PATH, b'{"instances": [', 400),
        ("GET", "/v1/models/missing", b"", 404),
        ("GET", "/v1/models/linear/versions/x", b"", 400),
    ],
    ids=["predict", "status", "metadata", "bad-json", "unknown-model", "bad-path"],
)
def test_rest_answers_carry_their_length(
    listener: Listener, method: str, path: str, body: bytes, status: int
) -> None:
    answered, headers, content = _exchange(
        listener, _request(listener, method, path, body)
    )
    assert answered == status, content[:200]
    assert b"transfer-encoding" not in headers, headers
    assert int(headers[b"content-length"]) == len(content) > 0


def test_grpc_web_answers_carry_their_length(listener: Listener) -> None:
    status, headers, content = _exchange(
        listener, _grpc_web_request(listener, _predict_message())
    )
    assert status == 200
    assert b"transfer-encoding" not in headers, headers
    assert int(headers[b"content-length"]) == len(content)
    message, trailers = grpcweb.response_parts(content)
    assert message
    assert trailers["grpc-status"] == "0"


def test_malformed_binary_metadata_over_grpc_web_is_invalid_argument(
    listener: Listener,
) -> None:
    extra = (("x-trace-bin", "!!not base64!!"),)
    status, headers, content = _exchange(
        listener, _grpc_web_request(listener, _predict_message(), extra)
    )
    assert status == 200
    assert headers[b"grpc-status"] == b"3", headers
    assert b"x-trace-bin" in headers[b"grpc-message"]
    assert int(headers[b"content-length"]) == len(content) == 0
    # A well-formed binary value (unpadded base64, as gRPC sends it) is taken.
    status, headers, content = _exchange(
        listener,
        _grpc_web_request(listener, _predict_message(), (("x-trace-bin", "AAEC"),)),
    )
    assert status == 200
    assert b"grpc-status" not in headers, headers
    assert grpcweb.response_parts(content)[1]["grpc-status"] == "0"
    # The log line is written as the answer goes; give a loaded machine a moment.
    deadline = time.monotonic() + 2
    while "malformed x-trace-bin metadata" not in listener.process.log_text():
        assert time.monotonic() < deadline, listener.process.log_tail(20)
        time.sleep(0.05)
    assert listener.process.log_text().count("malformed x-trace-bin metadata") == 1
    assert_no_traceback(listener.process)
