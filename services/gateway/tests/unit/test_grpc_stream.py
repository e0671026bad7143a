"""The pure parts of the gateway's HTTP/2 gRPC client: request headers, the
status of an answer's headers, trailers and resets, and the answer message
collected from DATA frames."""

from __future__ import annotations

import base64

import grpc
import pytest
from gateway.clients.grpc_stream import (
    AnswerReader,
    head_error,
    request_headers,
    reset_error,
    trailer_error,
)
from gateway.clients.grpcweb import RpcFailed
from h2.errors import ErrorCodes
from servekit_protocol import grpcweb

GRPC_HEAD = [(b":status", b"200"), (b"content-type", b"application/grpc")]


def test_request_headers_carry_the_timeout_and_the_metadata() -> None:
    headers = request_headers(
        "127.0.0.1:8500",
        "/tensorflow.serving.PredictionService/Predict",
        1.5,
        [("x-request-id", "abc"), ("Trace-Bin", "\x00\xff\x01")],
    )
    found = dict(headers)
    assert found[b":path"] == b"/tensorflow.serving.PredictionService/Predict"
    assert found[b":authority"] == b"127.0.0.1:8500"
    assert found[b"te"] == b"trailers"
    assert found[b"grpc-timeout"] == b"1500m"
    assert found[b"x-request-id"] == b"abc"
    # grpcio sends binary metadata base64 encoded, without padding.
    assert found[b"trace-bin"] == base64.b64encode(b"\x00\xff\x01").rstrip(b"=")
    assert [name for name, _ in headers[:4]] == [
        b":method",
        b":scheme",
        b":path",
        b":authority",
    ]


@pytest.mark.parametrize(
    ("seconds", "value"),
    [(0.0001, b"1m"), (0.0305, b"31m"), (30.0, b"30000m"), (10**6, b"1000000S")],
)
def test_the_timeout_is_whole_milliseconds_rounded_up(
    seconds: float, value: bytes
) -> None:
    found = dict(request_headers("b:1", "/s/m", seconds, []))
    assert found[b"grpc-timeout"] == value


def test_a_grpc_answers_head_is_no_error() -> None:
    assert head_error(GRPC_HEAD, ended=False) is None


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (b"503", grpc.StatusCode.UNAVAILABLE),
        (b"502", grpc.StatusCode.UNAVAILABLE),
        (b"429", grpc.StatusCode.UNAVAILABLE),
        (b"404", grpc.StatusCode.UNIMPLEMENTED),
        (b"401", grpc.StatusCode.UNAUTHENTICATED),
        (b"400", grpc.StatusCode.INTERNAL),
        (b"500", grpc.StatusCode.UNKNOWN),
    ],
)
def test_an_http_status_maps_as_grpc_says(status: bytes, code: grpc.StatusCode) -> None:
    error = head_error([(b":status", status)], ended=True)
    assert error is not None
    assert error.code is code


def test_a_non_grpc_content_type_is_unknown() -> None:
    error = head_error([(b":status", b"200"), (b"content-type", b"text/html")], False)
    assert error is not None
    assert error.code is grpc.StatusCode.UNKNOWN


def test_a_trailers_only_answer_carries_its_status_and_decoded_message() -> None:
    message = grpcweb.encode_status_message("model 'ü' not found: 100%")
    error = head_error(
        [*GRPC_HEAD, (b"grpc-status", b"5"), (b"grpc-message", message.encode())],
        ended=True,
    )
    assert error is not None
    assert error.code is grpc.StatusCode.NOT_FOUND
    assert error.details == "model 'ü' not found: 100%"


def test_trailers_with_ok_and_a_message_are_no_error() -> None:
    assert trailer_error([(b"grpc-status", b"0")], message_seen=True) is None


@pytest.mark.parametrize(
    ("trailers", "seen", "code"),
    [
        ([(b"grpc-status", b"0")], False, grpc.StatusCode.INTERNAL),
        ([], True, grpc.StatusCode.UNKNOWN),
        ([(b"grpc-status", b"3")], True, grpc.StatusCode.INVALID_ARGUMENT),
        ([(b"grpc-status", b"99")], True, grpc.StatusCode.UNKNOWN),
        ([(b"grpc-status", b"x")], True, grpc.StatusCode.UNKNOWN),
    ],
)
def test_trailers_map_to_their_status(
    trailers: list[tuple[bytes, bytes]], seen: bool, code: grpc.StatusCode
) -> None:
    error = trailer_error(trailers, message_seen=seen)
    assert error is not None
    assert error.code is code


@pytest.mark.parametrize(
    ("reset", "code"),
    [
        (ErrorCodes.REFUSED_STREAM, grpc.StatusCode.UNAVAILABLE),
        (ErrorCodes.CANCEL, grpc.StatusCode.CANCELLED),
        (ErrorCodes.ENHANCE_YOUR_CALM, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (ErrorCodes.INADEQUATE_SECURITY, grpc.StatusCode.PERMISSION_DENIED),
        (ErrorCodes.PROTOCOL_ERROR, grpc.StatusCode.INTERNAL),
        (ErrorCodes.NO_ERROR, grpc.StatusCode.INTERNAL),
        (0x99, grpc.StatusCode.INTERNAL),
        (None, grpc.StatusCode.INTERNAL),
    ],
)
def test_a_stream_reset_maps_as_grpc_maps_it(
    reset: int | None, code: grpc.StatusCode
) -> None:
    assert reset_error(reset).code is code


def _framed(message: bytes) -> bytes:
    return grpcweb.prefix(len(message)) + message


@pytest.mark.parametrize("frame_size", [1, 2, 5, 6, 7, 1000])
def test_the_message_is_collected_across_frames(frame_size: int) -> None:
    message = bytes(range(256)) * 3
    data = _framed(message)
    reader = AnswerReader(max_bytes=len(message))
    for start in range(0, len(data), frame_size):
        assert not reader.complete
        reader.feed(data[start : start + frame_size])
    assert reader.complete
    assert reader.size == len(message)
    assert b"".join(reader.parts) == message


def test_an_empty_message_is_complete() -> None:
    reader = AnswerReader(max_bytes=10)
    reader.feed(grpcweb.prefix(0))
    assert reader.complete
    assert reader.parts == []


def test_a_message_over_the_cap_is_refused_from_its_prefix() -> None:
    reader = AnswerReader(max_bytes=1024)
    with pytest.raises(RpcFailed) as caught:
        reader.feed(grpcweb.prefix(1025))
    assert caught.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reader.parts == []


def test_bytes_after_the_message_are_refused() -> None:
    reader = AnswerReader(max_bytes=1024)
    with pytest.raises(RpcFailed) as caught:
        reader.feed(_framed(b"abc") + b"\x00")
    assert caught.value.code is grpc.StatusCode.INTERNAL


def test_a_compressed_message_is_refused() -> None:
    reader = AnswerReader(max_bytes=1024)
    with pytest.raises(RpcFailed) as caught:
        reader.feed(grpcweb.prefix(3, grpcweb.COMPRESSED_FLAG) + b"abc")
    assert caught.value.code is grpc.StatusCode.INTERNAL


def test_a_frame_that_is_all_message_is_kept_as_is() -> None:
    reader = AnswerReader(max_bytes=1 << 20)
    reader.feed(grpcweb.prefix(8))
    frame = b"12345678"
    reader.feed(frame)
    assert reader.parts[0] is frame
