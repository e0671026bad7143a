"""Reading a backend's gRPC-Web answer: the message, its status, or no gRPC-Web."""

from __future__ import annotations

import grpc
import pytest
from gateway.clients.grpcweb import NotSpoken, RpcFailed, answer_message, status_code
from gateway.clients.http import HttpAnswer
from servekit_protocol import grpcweb

WEB = {b"content-type": b"application/grpc-web+proto"}


def test_a_message_and_an_ok_trailer() -> None:
    body = grpcweb.frame(b"answer") + grpcweb.trailer_frame(0, "", [])
    assert answer_message(HttpAnswer(200, body, WEB)) == b"answer"


def test_a_trailers_only_failure() -> None:
    headers = {**WEB, b"grpc-status": b"5", b"grpc-message": b"Servable%20gone"}
    with pytest.raises(RpcFailed) as caught:
        answer_message(HttpAnswer(200, b"", headers))
    assert caught.value.code is grpc.StatusCode.NOT_FOUND
    assert caught.value.details == "Servable gone"


def test_a_failure_in_the_trailer_frame() -> None:
    body = grpcweb.trailer_frame(14, "queue full", [])
    with pytest.raises(RpcFailed) as caught:
        answer_message(HttpAnswer(200, body, WEB))
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE
    assert caught.value.details == "queue full"


@pytest.mark.parametrize(
    ("answer", "details"),
    [
        (HttpAnswer(200, grpcweb.trailer_frame(0, "", []), WEB), "without a message"),
        (HttpAnswer(200, b"", {**WEB, b"grpc-status": b"0"}), "without a message"),
        (HttpAnswer(200, b"\x00\x00\x00\x00\x09ab", WEB), "announces 9 bytes"),
    ],
)
def test_malformed_answers_are_internal(answer: HttpAnswer, details: str) -> None:
    with pytest.raises(RpcFailed, match=details) as caught:
        answer_message(answer)
    assert caught.value.code is grpc.StatusCode.INTERNAL


def test_a_missing_status_is_unknown() -> None:
    with pytest.raises(RpcFailed) as caught:
        answer_message(HttpAnswer(200, grpcweb.frame(b"x"), WEB))
    assert caught.value.code is grpc.StatusCode.UNKNOWN


@pytest.mark.parametrize("status", [400, 404, 405, 415])
def test_a_plain_rest_server_does_not_speak_it(status: int) -> None:
    answer = HttpAnswer(status, b'{"error": "Not found"}', {})
    with pytest.raises(NotSpoken, match="Not found"):
        answer_message(answer)


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (503, grpc.StatusCode.UNAVAILABLE),
        (429, grpc.StatusCode.UNAVAILABLE),
        (502, grpc.StatusCode.UNAVAILABLE),
        (500, grpc.StatusCode.UNKNOWN),
    ],
)
def test_other_http_statuses_map_as_grpc_clients_map_them(
    status: int, code: grpc.StatusCode
) -> None:
    with pytest.raises(RpcFailed) as caught:
        answer_message(HttpAnswer(status, b'{"error": "busy"}', {}))
    assert caught.value.code is code
    assert "busy" in caught.value.details


def test_status_codes() -> None:
    assert status_code("0") is grpc.StatusCode.OK
    assert status_code(b"14") is grpc.StatusCode.UNAVAILABLE
    assert status_code("99") is grpc.StatusCode.UNKNOWN
    assert status_code("x") is grpc.StatusCode.UNKNOWN
