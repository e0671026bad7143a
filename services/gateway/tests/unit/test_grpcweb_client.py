"""Reading a backend's gRPC-Web answer: the message, its status, or no gRPC-Web;
from the joined body or from the chunks it was received in."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Sequence

import grpc
import pytest
from gateway.clients.grpcweb import (
    ChunkedBody,
    NotSpoken,
    RpcFailed,
    answer_message,
    chunked_answer_message,
    status_code,
)
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


MESSAGE = bytes(range(256)) * 3
BODIES = {
    "message and OK": grpcweb.frame(MESSAGE) + grpcweb.trailer_frame(0, "", []),
    "failure": grpcweb.trailer_frame(14, "queue full", []),
    "no message": grpcweb.trailer_frame(0, "", []),
    "no status": grpcweb.frame(MESSAGE),
    "two messages": grpcweb.frame(b"first")
    + grpcweb.frame(MESSAGE)
    + grpcweb.trailer_frame(0, "", []),
    "compressed": b"\x01"
    + grpcweb.frame(MESSAGE)[1:]
    + grpcweb.trailer_frame(0, "", []),
    "cut frame": grpcweb.frame(MESSAGE)[:-1],
    "cut prefix": grpcweb.frame(MESSAGE) + b"\x80\x00",
}


def _outcome(read: Callable[[], bytes]) -> tuple[str, str]:
    try:
        return "message", read().hex()
    except RpcFailed as exc:
        return exc.code.name, exc.details


async def _chunked_outcome(answer: HttpAnswer) -> tuple[str, str]:
    try:
        return "message", (await chunked_answer_message(answer)).hex()
    except RpcFailed as exc:
        return exc.code.name, exc.details


def _chunked(body: bytes, cuts: Sequence[int]) -> list[bytes]:
    bounds = [0, *cuts, len(body)]
    return [body[start:stop] for start, stop in itertools.pairwise(bounds)]


@pytest.mark.parametrize("kind", list(BODIES))
def test_an_answer_read_from_its_chunks_is_read_as_the_joined_one(kind: str) -> None:
    """Every place the body may be cut in two or three, prefixes included."""
    body = BODIES[kind]
    expected = _outcome(lambda: answer_message(HttpAnswer(200, body, WEB)))
    cuts = [(cut,) for cut in range(1, len(body))]
    cuts += [(cut, cut + 2) for cut in range(1, len(body) - 2, 7)]

    async def read_all() -> None:
        for cut in cuts:
            answer = HttpAnswer(200, b"", dict(WEB), _chunked(body, cut))
            assert await _chunked_outcome(answer) == expected, (kind, cut)

    asyncio.run(read_all())


@pytest.mark.parametrize(
    ("status", "headers", "error"),
    [
        (404, {}, NotSpoken),
        (503, {}, RpcFailed),
        (200, {**WEB, b"grpc-status": b"5"}, RpcFailed),
    ],
)
def test_a_chunked_answer_that_is_no_message_fails_as_the_joined_one(
    status: int, headers: dict[bytes, bytes], error: type[Exception]
) -> None:
    body = b'{"error": "Not found"}'
    answer = HttpAnswer(status, b"", headers, _chunked(body, (3, 9)))
    with pytest.raises(error) as caught:
        asyncio.run(chunked_answer_message(answer))
    with pytest.raises(error) as joined:
        answer_message(HttpAnswer(status, body, headers))
    assert str(caught.value) == str(joined.value)


def test_views_cover_exactly_the_range_asked() -> None:
    body = bytes(range(100))
    chunked = ChunkedBody(_chunked(body, (10, 11, 50)))
    assert chunked.size == 100
    for start in range(100):
        for stop in range(start, 101):
            assert b"".join(chunked.views(start, stop)) == body[start:stop]
