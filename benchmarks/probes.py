"""Lean one-request-at-a-time clients for the interleaved 1-client measurement.

Each probe keeps one connection open and sends ready-made bytes: the request
never changes, so the only client work per call is a ``send`` and reading the
answer. A probe runs in the harness process on the load-generator core; its own
cost (tens of microseconds) counts against the server measured, never for it.

``HttpProbe`` speaks HTTP/1.1 with keep-alive. ``GrpcProbe`` speaks just enough
HTTP/2 for unary gRPC calls on one connection: the preface, a SETTINGS frame
opening the receive windows wide (so it never has to send WINDOW_UPDATE), and per
call a HEADERS frame of literal, never-indexed fields (no HPACK state to keep)
and the message's DATA frames. It does not decode the answer's headers; as with
h2load, a call succeeded when its stream carried a message of the size a checked
call answered, since a failed gRPC call carries none.
"""

from __future__ import annotations

import socket
import time
from typing import Self
from urllib.parse import urlsplit

from benchmarks.targets import GrpcTarget, HttpTarget

TIMEOUT_S = 30.0


class ProbeError(Exception):
    """A call failed: connection lost, an error status, or a malformed answer."""


class _Connection:
    """One TCP connection and the bytes read from it but not yet taken."""

    def __init__(self, host: str, port: int) -> None:
        try:
            self._connection = socket.create_connection((host, port), TIMEOUT_S)
        except OSError as exc:
            raise ProbeError(f"cannot connect to {host}:{port}: {exc}") from exc
        self._connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = bytearray()

    def _fill(self) -> None:
        chunk = self._connection.recv(65536)
        if not chunk:
            raise ProbeError("the server closed the connection")
        self._buffer += chunk

    def _take(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self._fill()
        taken = bytes(self._buffer[:size])
        del self._buffer[:size]
        return taken

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class HttpProbe(_Connection):
    """POSTs one body over a kept-alive HTTP/1.1 connection."""

    def __init__(self, target: HttpTarget) -> None:
        parts = urlsplit(target.url)
        host = parts.hostname or "127.0.0.1"
        port = parts.port or 80
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        body = target.body_file.read_bytes()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: {target.content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        self._request = head.encode("ascii") + body
        super().__init__(host, port)

    def call(self) -> int:
        """One request; its latency in nanoseconds.

        Raises:
            ProbeError: Not a 200 answer, or the connection failed.
        """
        started = time.perf_counter_ns()
        try:
            self._connection.sendall(self._request)
            status = self._read_answer()
        except OSError as exc:
            raise ProbeError(f"HTTP call failed: {exc}") from exc
        elapsed = time.perf_counter_ns() - started
        if status != 200:
            raise ProbeError(f"HTTP status {status}")
        return elapsed

    def _line(self) -> bytes:
        while (end := self._buffer.find(b"\r\n")) < 0:
            self._fill()
        return self._take(end + 2)[:-2]

    def _read_answer(self) -> int:
        status_line = self._line()
        try:
            status = int(status_line.split(b" ", 2)[1])
        except (IndexError, ValueError) as exc:
            raise ProbeError(f"malformed status line {status_line!r}") from exc
        length: int | None = None
        chunked = False
        while line := self._line():
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
        if chunked:
            while size := int(self._line().split(b";")[0], 16):
                self._take(size + 2)
            while self._line():  # trailers, then the blank line
                pass
        elif length is not None:
            self._take(length)
        else:
            raise ProbeError("an answer with neither Content-Length nor chunks")
        return status


# HTTP/2 frame types and flags (RFC 9113).
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7
WINDOW_UPDATE = 0x8
END_STREAM, ACK, END_HEADERS, PADDED = 0x1, 0x1, 0x4, 0x8
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65_535
MAX_FRAME = 16_384
SETTINGS_ENABLE_PUSH, SETTINGS_INITIAL_WINDOW_SIZE = 0x2, 0x4


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    """One HTTP/2 frame."""
    return (
        len(payload).to_bytes(3, "big")
        + bytes((kind, flags))
        + stream.to_bytes(4, "big")
        + payload
    )


def hpack_integer(value: int, prefix_bits: int, first_byte: int = 0) -> bytes:
    """An HPACK integer (RFC 7541 §5.1) with ``prefix_bits`` in the first byte."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first_byte | value,))
    encoded = bytearray((first_byte | limit,))
    value -= limit
    while value >= 128:
        encoded.append(value % 128 + 128)
        value //= 128
    encoded.append(value)
    return bytes(encoded)


def hpack_literal(name: str, value: str) -> bytes:
    """A header as a literal never added to the dynamic table (RFC 7541 §6.2.2)."""
    encoded = b"\x00"
    for text in (name.encode("ascii"), value.encode("ascii")):
        encoded += hpack_integer(len(text), 7) + text
    return encoded


class GrpcProbe(_Connection):
    """Unary calls of one method with one request, over one HTTP/2 connection."""

    def __init__(self, target: GrpcTarget) -> None:
        host, _, port = target.address.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        self._expected = target.response_bytes
        message = target.request_file.read_bytes()
        self._block = b"".join(
            hpack_literal(name, value)
            for name, value in (
                (":method", "POST"),
                (":scheme", "http"),
                (":path", target.path),
                (":authority", target.address),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            )
        )
        self._message = b"\x00" + len(message).to_bytes(4, "big") + message
        super().__init__(host, int(port))
        self._stream = 1
        settings = SETTINGS_ENABLE_PUSH.to_bytes(2, "big") + (0).to_bytes(4, "big")
        settings += SETTINGS_INITIAL_WINDOW_SIZE.to_bytes(2, "big")
        settings += MAX_WINDOW.to_bytes(4, "big")
        self._connection.sendall(
            PREFACE
            + frame(SETTINGS, 0, 0, settings)
            + frame(
                WINDOW_UPDATE, 0, 0, (MAX_WINDOW - DEFAULT_WINDOW).to_bytes(4, "big")
            )
        )

    def _request(self, stream: int) -> bytes:
        frames = [frame(HEADERS, END_HEADERS, stream, self._block)]
        message = self._message
        for start in range(0, len(message), MAX_FRAME):
            last = start + MAX_FRAME >= len(message)
            chunk = message[start : start + MAX_FRAME]
            frames.append(frame(DATA, END_STREAM if last else 0, stream, chunk))
        return b"".join(frames)

    def call(self) -> int:
        """One call; its latency in nanoseconds.

        Raises:
            ProbeError: No message of the expected size, a reset stream, the
                connection closing, or going away.
        """
        stream = self._stream
        self._stream += 2
        request = self._request(stream)
        started = time.perf_counter_ns()
        try:
            self._connection.sendall(request)
            received = self._read_stream(stream)
        except OSError as exc:
            raise ProbeError(f"gRPC call failed: {exc}") from exc
        elapsed = time.perf_counter_ns() - started
        if received < 5 or (
            self._expected is not None and received != 5 + self._expected
        ):
            raise ProbeError(
                f"gRPC call answered {received} message bytes; a good answer has "
                f"{'some' if self._expected is None else 5 + self._expected}"
            )
        return elapsed

    def _read_stream(self, stream: int) -> int:
        """Read frames until ``stream`` ends; the DATA bytes it carried."""
        received = 0
        while True:
            header = self._take(9)
            length = int.from_bytes(header[:3], "big")
            kind, flags = header[3], header[4]
            on = int.from_bytes(header[5:9], "big") & MAX_WINDOW
            payload = self._take(length)
            if kind == SETTINGS and not flags & ACK:
                self._connection.sendall(frame(SETTINGS, ACK, 0))
            elif kind == PING and not flags & ACK:
                self._connection.sendall(frame(PING, ACK, 0, payload))
            elif kind == GOAWAY:
                raise ProbeError("the server sent GOAWAY")
            elif on != stream:
                continue
            elif kind == RST_STREAM:
                raise ProbeError("the server reset the stream")
            elif kind == DATA:
                received += length - (payload[0] + 1 if flags & PADDED else 0)
                if flags & END_STREAM:
                    return received
            elif kind == HEADERS and flags & END_STREAM:
                return received
