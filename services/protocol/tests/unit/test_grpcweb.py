"""gRPC-Web framing, trailers, timeouts and status-message encoding."""

from __future__ import annotations

import base64
import struct

import pytest
from servekit_protocol import grpcweb
from servekit_protocol.errors import InvalidArgument


def test_a_frame_is_flag_length_message() -> None:
    assert grpcweb.frame(b"abc") == b"\x00\x00\x00\x00\x03abc"
    assert grpcweb.request_message(grpcweb.frame(b"abc")) == b"abc"
    assert grpcweb.request_message(grpcweb.frame(b"")) == b""


def test_a_request_may_end_with_an_empty_trailer_frame() -> None:
    body = grpcweb.frame(b"abc") + struct.pack(">BI", 0x80, 0)
    assert grpcweb.request_message(body) == b"abc"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", "one message, got 0"),
        (b"\x00\x00\x00", "inside a frame header"),
        (b"\x00\x00\x00\x00\x05ab", "announces 5 bytes but 2 follow"),
        (grpcweb.frame(b"a") + grpcweb.frame(b"b"), "one message, got 2"),
        (b"\x01\x00\x00\x00\x01a", "compressed"),
    ],
)
def test_malformed_requests(body: bytes, expected: str) -> None:
    with pytest.raises(InvalidArgument, match=expected):
        grpcweb.request_message(body)


def test_response_parts_reads_the_message_and_the_trailers() -> None:
    body = grpcweb.frame(b"answer") + grpcweb.trailer_frame(
        0, "", [("x-request-id", "r1")]
    )
    message, trailers = grpcweb.response_parts(body)
    assert message == b"answer"
    assert trailers == {"grpc-status": "0", "grpc-message": "", "x-request-id": "r1"}


def test_an_error_trailer_without_a_message() -> None:
    body = grpcweb.trailer_frame(5, "Servable not found: 100% gone ✓", [])
    message, trailers = grpcweb.response_parts(body)
    assert message is None
    assert trailers["grpc-status"] == "5"
    encoded = trailers["grpc-message"]
    assert encoded == "Servable not found: 100%25 gone %E2%9C%93"
    assert grpcweb.decode_status_message(encoded) == "Servable not found: 100% gone ✓"


def test_status_messages_keep_printable_ascii() -> None:
    text = "Expects arg[0] to be float but string is provided (a/b:c=[1,2]) {x}"
    assert grpcweb.encode_status_message(text) == text
    assert grpcweb.encode_status_message("line\nbreak") == "line%0Abreak"


@pytest.mark.parametrize(
    ("text", "encoded"),
    [
        (
            "Duplicate evaluation of signature: ",
            "Duplicate evaluation of signature:%20",
        ),
        ("  two  inside and ends  ", "%20%20two  inside and ends%20%20"),
        (" ", "%20"),
        ("   ", "%20%20%20"),
        ("\tTab ", "%09Tab%20"),
    ],
)
def test_status_messages_escape_spaces_at_either_end(text: str, encoded: str) -> None:
    assert grpcweb.encode_status_message(text) == encoded
    assert grpcweb.decode_status_message(encoded) == text


def test_text_bodies_may_be_padded_between_chunks() -> None:
    first, second = grpcweb.frame(b"ab"), grpcweb.frame(b"c")
    chunked = base64.b64encode(first) + base64.b64encode(second)
    assert b"=" in base64.b64encode(first)
    assert grpcweb.decode_text(chunked) == first + second
    assert grpcweb.decode_text(base64.b64encode(first + second)) == first + second
    with pytest.raises(InvalidArgument, match="not base64"):
        grpcweb.decode_text(b"!!!!")


def test_text_bodies_over_a_piece_decode_whole() -> None:
    # Decoding goes a MiB at a time: chunks and line breaks must straddle the
    # pieces' edges without changing the result, and an error past the first
    # piece is still found.
    payload = bytes(range(256)) * 12_289
    first = base64.b64encode(payload[:2_000_000])
    second = base64.b64encode(payload[2_000_000:])
    assert first.endswith(b"=")
    wrapped = b"\r\n".join(first[i : i + 76] for i in range(0, len(first), 76))
    assert len(wrapped) > 2 << 20
    assert grpcweb.decode_text(wrapped + second) == payload
    with pytest.raises(InvalidArgument, match="not base64"):
        grpcweb.decode_text(first + second[:-8] + b"!" + second[-7:])


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("1m", 0.001), ("250m", 0.25), ("3S", 3.0), ("2M", 120.0), ("1H", 3600.0)],
)
def test_decode_timeout(value: str, seconds: float) -> None:
    assert grpcweb.decode_timeout(value) == pytest.approx(seconds)
    assert grpcweb.decode_timeout("5u") == pytest.approx(5e-6)
    assert grpcweb.decode_timeout("7n") == pytest.approx(7e-9)


@pytest.mark.parametrize("value", ["", "m", "5", "5x", "-1m", "123456789m", "1.5S"])
def test_malformed_timeouts(value: str) -> None:
    with pytest.raises(InvalidArgument, match="grpc-timeout"):
        grpcweb.decode_timeout(value)


def test_encode_timeout_rounds_up_and_fits_eight_digits() -> None:
    assert grpcweb.encode_timeout(0.0) == "1m"
    assert grpcweb.encode_timeout(0.0101) == "11m"
    assert grpcweb.encode_timeout(30.0) == "30000m"
    assert grpcweb.encode_timeout(200_000.0) == "200000S"
    assert grpcweb.encode_timeout(2e9) == "555556H"
    for seconds in (0.0004, 1.0, 99_999.999, 1e9):
        assert grpcweb.decode_timeout(grpcweb.encode_timeout(seconds)) >= seconds


def test_http_statuses_without_a_grpc_status() -> None:
    assert grpcweb.code_for_http_status(404) == grpcweb.UNIMPLEMENTED
    assert grpcweb.code_for_http_status(503) == grpcweb.UNAVAILABLE
    assert grpcweb.code_for_http_status(500) == grpcweb.UNKNOWN


def test_content_types() -> None:
    assert grpcweb.is_grpc_web(b"application/grpc-web")
    assert grpcweb.is_grpc_web(b"Application/gRPC-Web+proto")
    assert grpcweb.is_text(b"application/grpc-web-text+proto")
    assert not grpcweb.is_text(grpcweb.CONTENT_TYPE)
    assert not grpcweb.is_grpc_web(b"application/grpc")
    assert not grpcweb.is_grpc_web(b"application/json")
