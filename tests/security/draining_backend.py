"""A gRPC backend that drains its first connection with GOAWAY while calls are
under way on it, for ``test_gateway_draining_backend``: an HTTP/2 server
(``h2``) on 127.0.0.1 in a thread of its own.

The first connection that carries a Predict holds its Predicts until
:attr:`DrainingBackend.hold` of them have arrived, then writes, in one
write: for each call up to the middle one, its headers and the first half
of its answer; a GOAWAY announcing the last stream id 2^31-1 and a second
one naming the middle call's stream (as a gRPC server drains); then the rest
of those answers and their trailers. The calls above the middle one are
never answered there, and streams opened on that connection afterwards are
recorded. Every other connection answers each Predict at once.

Each answer is a PredictResponse whose ``id`` output (DT_STRING) holds the
call's request id followed by :data:`PADDING_BYTES` bytes, so that the
answer spans several DATA frames and a caller can check it got its own.
Other calls (the gateway's health checks) are answered UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import h2.events
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame
from servekit_protocol import grpcweb, messages

from tests.security.threadserver import served_in_a_thread

PREDICT_PATH = b"/tensorflow.serving.PredictionService/Predict"
PADDING_BYTES = 48 * 1024
"""Bytes after the request id in each answer's ``id`` value."""
_FRAME_BYTES = 16 * 1024
"""h2's default largest frame."""


def answer_message(request_id: str) -> bytes:
    """The PredictResponse the backend answers to ``request_id``."""
    response = messages.PredictResponse()
    tensor = response.outputs["id"]
    tensor.dtype = messages.DT_STRING
    tensor.tensor_shape.dim.add().size = 1
    tensor.string_val.append(request_id.encode() + bytes(PADDING_BYTES))
    return response.SerializeToString()


@dataclass
class DrainingBackend:
    hold: int
    """Predicts the draining connection gathers before it drains."""
    port: int = 0
    connections: int = 0
    """Connections accepted so far."""
    answered_on: dict[str, int] = field(default_factory=dict)
    """Request id -> the number (1-based, in order of acceptance) of the
    connection that answered it."""
    drained_on: int | None = None
    """The number of the connection that drained."""
    unanswered: list[str] = field(default_factory=list)
    """Request ids of the calls above the GOAWAY's last stream id."""
    late: list[str] = field(default_factory=list)
    """Request ids of streams opened on the draining connection after its
    GOAWAY."""
    drained_closed: threading.Event = field(default_factory=threading.Event)
    """Set when the client closed the drained connection."""

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


class _Protocol(asyncio.Protocol):
    def __init__(self, backend: DrainingBackend) -> None:
        self._backend = backend
        backend.connections += 1
        self._number = backend.connections
        self._h2 = H2Connection(
            H2Configuration(client_side=False, header_encoding=None)
        )
        self._transport: asyncio.Transport | None = None
        self._calls: dict[int, tuple[bytes, str]] = {}
        self._held: list[int] = []
        self._rest: dict[int, bytes] = {}
        self._gone_away = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._h2.initiate_connection()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: ARG002
        if self._number == self._backend.drained_on:
            self._backend.drained_closed.set()

    def data_received(self, data: bytes) -> None:
        for event in self._h2.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                headers = dict(event.headers or [])
                self._calls[event.stream_id or 0] = (
                    headers.get(b":path", b""),
                    headers.get(b"x-request-id", b"").decode(),
                )
            elif isinstance(event, h2.events.DataReceived):
                self._h2.acknowledge_received_data(
                    event.flow_controlled_length or 0, event.stream_id or 0
                )
            elif isinstance(event, h2.events.StreamEnded):
                self._on_request(event.stream_id or 0)
        self._flush()

    def _on_request(self, number: int) -> None:
        path, request_id = self._calls[number]
        if path != PREDICT_PATH:
            self._h2.send_headers(
                number,
                [
                    (b":status", b"200"),
                    (b"content-type", b"application/grpc"),
                    (b"grpc-status", b"12"),
                ],
                end_stream=True,
            )
            return
        backend = self._backend
        if self._gone_away:
            backend.late.append(request_id)
            return
        if backend.drained_on is None:
            backend.drained_on = self._number
        if backend.drained_on != self._number:
            self._answer(number, whole=True)
            return
        self._held.append(number)
        if len(self._held) == backend.hold:
            self._drain()

    def _drain(self) -> None:
        held = sorted(self._held)
        last = held[(len(held) - 1) // 2]
        answered = [n for n in held if n <= last]
        for number in answered:
            self._answer(number, whole=False)
        write = self._h2.data_to_send()
        for last_stream_id in ((1 << 31) - 1, last):
            frame = GoAwayFrame(0)
            frame.last_stream_id = last_stream_id
            frame.error_code = ErrorCodes.NO_ERROR
            # Past h2's state machine, which refuses to send anything after
            # its own GOAWAY: the calls up to ``last`` are still answered.
            write += frame.serialize()
        for number in answered:
            self._answer_rest(number)
        write += self._h2.data_to_send()
        self._gone_away = True
        self._backend.unanswered.extend(self._calls[n][1] for n in held if n > last)
        assert self._transport is not None
        self._transport.write(write)

    def _answer(self, number: int, *, whole: bool) -> None:
        message = answer_message(self._calls[number][1])
        body = grpcweb.prefix(len(message)) + message
        self._h2.send_headers(
            number, [(b":status", b"200"), (b"content-type", b"application/grpc")]
        )
        half = len(body) // 2
        self._send(number, body if whole else body[:half])
        if whole:
            self._end(number)
        else:
            self._rest[number] = body[half:]

    def _answer_rest(self, number: int) -> None:
        self._send(number, self._rest.pop(number))
        self._end(number)

    def _send(self, number: int, body: bytes) -> None:
        for start in range(0, len(body), _FRAME_BYTES):
            self._h2.send_data(number, body[start : start + _FRAME_BYTES])

    def _end(self, number: int) -> None:
        self._h2.send_headers(number, [(b"grpc-status", b"0")], end_stream=True)
        self._backend.answered_on[self._calls[number][1]] = self._number

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)


@contextlib.contextmanager
def draining_backend(hold: int) -> Iterator[DrainingBackend]:
    """The backend, listening until the block ends."""
    backend = DrainingBackend(hold)
    with served_in_a_thread(lambda: _Protocol(backend), "the draining backend") as port:
        backend.port = port
        yield backend
