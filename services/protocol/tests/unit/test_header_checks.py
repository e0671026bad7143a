"""Repeated header blocks skip ``h2``'s checks only when the answer is known."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import h2.events
import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.exceptions import ProtocolError
from h2.stream import H2Stream
from h2.utilities import HeaderValidationFlags
from hpack import HeaderTuple
from servekit_protocol.grpc_server import header_checks
from servekit_protocol.grpc_server.connection import _CONFIG
from servekit_protocol.grpc_server.hpack_cache import RepeatDecoder

_REQUEST = HeaderValidationFlags(False, False, False, False)
_TRAILERS = HeaderValidationFlags(False, True, False, False)
_HEADERS = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/tensorflow.serving.PredictionService/Predict"),
    (b":authority", b"127.0.0.1:8500"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
]


@pytest.fixture
def counted() -> Iterator[list[int]]:
    """How many blocks ``h2``'s own step processed, with the memory installed."""
    header_checks.uninstall()
    original = H2Stream._process_received_headers
    calls = [0]

    def counting(self: H2Stream, *args: Any) -> list[Any]:
        calls[0] += 1
        return original(self, *args)

    H2Stream._process_received_headers = counting  # type: ignore[method-assign]
    header_checks.install()
    try:
        yield calls
    finally:
        header_checks.uninstall()
        H2Stream._process_received_headers = original  # type: ignore[method-assign]
        header_checks.install()


def _stream() -> H2Stream:
    return H2Stream(1, _CONFIG, 65_535, 65_535)


def _fields(headers: list[tuple[bytes, bytes]]) -> list[HeaderTuple]:
    return [HeaderTuple(name, value) for name, value in headers]


def test_the_same_fields_again_get_the_same_answer_from_memory(
    counted: list[int],
) -> None:
    fields = _fields(_HEADERS)
    first = _stream()._process_received_headers(fields, _REQUEST, None)
    again = _stream()._process_received_headers(list(fields), _REQUEST, None)
    assert first == again == _HEADERS
    assert counted[0] == 1
    # Equal values in other objects are checked again.
    _stream()._process_received_headers(_fields(_HEADERS), _REQUEST, None)
    assert counted[0] == 2


def test_a_refused_block_is_refused_every_time(counted: list[int]) -> None:
    fields = _fields([*_HEADERS, (b"connection", b"close")])
    for _ in range(3):
        with pytest.raises(ProtocolError, match="Connection-specific header"):
            _stream()._process_received_headers(fields, _REQUEST, None)
    assert counted[0] == 3


def test_the_flags_are_part_of_what_is_remembered(counted: list[int]) -> None:
    # Fine as trailers, but a request needs its pseudo-headers.
    fields = _fields([(b"grpc-status", b"0")])
    assert _stream()._process_received_headers(fields, _TRAILERS, None) == fields
    with pytest.raises(ProtocolError, match="missing mandatory"):
        _stream()._process_received_headers(fields, _REQUEST, None)
    assert counted[0] == 2


def test_the_memory_is_bounded(counted: list[int]) -> None:
    kept = [_fields(_HEADERS) for _ in range(header_checks.MAX_REMEMBERED + 5)]
    for fields in kept:
        _stream()._process_received_headers(fields, _REQUEST, None)
    assert len(header_checks._passed) <= header_checks.MAX_REMEMBERED
    assert counted[0] == len(kept)


def test_a_connection_checks_a_repeated_block_once(counted: list[int]) -> None:
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    server = H2Connection(_CONFIG)
    server.decoder = RepeatDecoder(16_384)
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    received: list[list[tuple[bytes, bytes]]] = []
    for stream_id in (1, 3, 5):
        client.send_headers(stream_id, _HEADERS, end_stream=True)
        for event in server.receive_data(client.data_to_send()):
            if isinstance(event, h2.events.RequestReceived):
                received.append(list(event.headers))
    assert received == [_HEADERS] * 3
    # The client's second block refers to the table entries its first one
    # added; the third repeats the second byte for byte.
    assert counted[0] == 2
    # A forbidden field is still refused over a connection.
    bad = H2Connection(
        H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
    )
    bad.initiate_connection()
    listener = H2Connection(_CONFIG)
    listener.decoder = RepeatDecoder(16_384)
    listener.initiate_connection()
    listener.receive_data(bad.data_to_send())
    bad.send_headers(1, [*_HEADERS, (b"connection", b"close")], end_stream=True)
    with pytest.raises(ProtocolError):
        listener.receive_data(bad.data_to_send())
