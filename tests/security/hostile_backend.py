"""A gRPC backend that misbehaves on purpose, for the gateway's HTTP/2 client
(``test_gateway_hostile_backend``): an HTTP/2 server (``h2``) on 127.0.0.1 in
a thread of its own, whose answer to a call depends on the call's request id:

- ``silent``: never answers;
- ``huge``: answers headers and a message prefix announcing 2 GiB - 1 bytes,
  then some of them;
- ``endless``: announces a 1 MiB message and keeps sending past its end;
- ``spaced``: answers INVALID_ARGUMENT with a ``grpc-message`` that begins
  and ends with a space (:data:`SPACED_MESSAGE`), as gRPC servers may send.

Any other call is answered UNIMPLEMENTED (the gateway's health checks). The
server records each stream the client resets, by request id.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import h2.events
from h2.config import H2Configuration
from h2.connection import H2Connection
from servekit_protocol import grpcweb

from tests.security.threadserver import served_in_a_thread

ENDLESS_CAP_BYTES = 256 * 1024 * 1024
"""Most bytes an ``endless`` answer sends: a client that never stops reading
fails its test rather than running it forever."""
_CHUNK = 16 * 1024
SPACED_MESSAGE = " Duplicate evaluation of signature: "


@dataclass
class HostileBackend:
    port: int = 0
    resets: dict[str, int] = field(default_factory=dict)
    """Request id -> the error code of the RST_STREAM the client sent."""
    sent: dict[str, int] = field(default_factory=dict)
    """Request id -> answer bytes sent."""

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


class _Protocol(asyncio.Protocol):
    def __init__(self, backend: HostileBackend) -> None:
        self._backend = backend
        self._h2 = H2Connection(
            # ``spaced`` sends what RFC 9113 8.2.1 forbids and gRPC allows.
            H2Configuration(
                client_side=False,
                header_encoding=None,
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
        )
        self._transport: asyncio.Transport | None = None
        self._ids: dict[int, str] = {}
        self._endless: set[int] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._h2.initiate_connection()
        self._flush()

    def data_received(self, data: bytes) -> None:
        for event in self._h2.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                headers = dict(event.headers or [])
                self._ids[event.stream_id or 0] = headers.get(
                    b"x-request-id", b""
                ).decode()
            elif isinstance(event, h2.events.DataReceived):
                self._h2.acknowledge_received_data(
                    event.flow_controlled_length or 0, event.stream_id or 0
                )
            elif isinstance(event, h2.events.StreamEnded):
                self._answer(event.stream_id or 0)
            elif isinstance(event, h2.events.StreamReset):
                number = event.stream_id or 0
                self._endless.discard(number)
                self._backend.resets[self._ids.get(number, "")] = int(
                    event.error_code or 0
                )
        self._pump()
        self._flush()

    def _answer(self, number: int) -> None:
        mode = self._ids.get(number, "")
        if mode == "silent":
            return
        if mode not in ("huge", "endless"):
            status = [(b"grpc-status", b"12")]
            if mode == "spaced":
                status = [
                    (b"grpc-status", b"3"),
                    (b"grpc-message", SPACED_MESSAGE.encode()),
                ]
            self._h2.send_headers(
                number,
                [
                    (b":status", b"200"),
                    (b"content-type", b"application/grpc"),
                    *status,
                ],
                end_stream=True,
            )
            return
        self._h2.send_headers(
            number, [(b":status", b"200"), (b"content-type", b"application/grpc")]
        )
        length = (1 << 31) - 1 if mode == "huge" else 1024 * 1024
        self._h2.send_data(number, grpcweb.prefix(length) + bytes(_CHUNK - 5))
        self._backend.sent[mode] = _CHUNK
        if mode == "endless":
            self._endless.add(number)

    def _pump(self) -> None:
        for number in list(self._endless):
            mode = self._ids[number]
            while self._backend.sent[mode] < ENDLESS_CAP_BYTES:
                window = min(
                    self._h2.local_flow_control_window(number),
                    self._h2.max_outbound_frame_size,
                    _CHUNK,
                )
                if window <= 0:
                    break
                self._h2.send_data(number, bytes(window))
                self._backend.sent[mode] += window

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)


@contextlib.contextmanager
def hostile_backend() -> Iterator[HostileBackend]:
    """The backend, listening until the block ends."""
    backend = HostileBackend()
    with served_in_a_thread(lambda: _Protocol(backend), "the hostile backend") as port:
        backend.port = port
        yield backend
