"""A raw HTTP/2 client for the gRPC attack tests, and the limits they run under.

The attacks build their frames with the ``h2`` library's pieces (``hpack`` for
header blocks, ``hyperframe`` for frames), so they can send what no well-behaved
client would: floods, resets, malformed headers. What the server sends back is
read as frames, never through a client state machine that would object to it.
The gRPC ports run with the :data:`LIMITS` below (short timeouts, a small
connection cap) so each attack shows its bounded effect in seconds.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass

import grpc
import hpack
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    RstStreamFrame,
    SettingsFrame,
)

from tests.security.figures import record
from tests.support.processes import ServerProcess

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HANDSHAKE_TIMEOUT = 1.0
IDLE_TIMEOUT = 1.5
HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.5
SEND_STALL_TIMEOUT = 1.5
MAX_CONNECTIONS = 32
MAX_BUFFERED = 4 * 1024 * 1024
LIMITS = {
    "handshake_timeout_seconds": HANDSHAKE_TIMEOUT,
    "idle_timeout_seconds": IDLE_TIMEOUT,
    "header_read_timeout_seconds": HEADER_TIMEOUT,
    "body_read_timeout_seconds": BODY_TIMEOUT,
    "send_stall_timeout_seconds": SEND_STALL_TIMEOUT,
    "max_connections": MAX_CONNECTIONS,
    "max_buffered_request_bytes": MAX_BUFFERED,
}
"""The gRPC ports' HTTP/2 limits in these tests; the others keep their defaults
(100 streams, 16 KiB header lists, 8 CONTINUATIONs, 1000 resets at 33/s)."""
MODEL_SERVER_FLAGS = tuple(f"--http2_{k}={v}" for k, v in LIMITS.items())
GATEWAY_ENV = {"GATEWAY_HTTP2": json.dumps(LIMITS)}
CLOSING = 1.0
"""Seconds a closing connection may take to flush to a client that does not
read before it is aborted (the server's own constant)."""
SLACK = 1.5
"""Seconds allowed past a timeout: the server's timer ticks every quarter of the
shortest timeout, and a loaded 2-core machine delays the close a little more."""
NORMAL_CALL_SECONDS = 2.0
"""Most a health call may take on a fresh connection during an attack (it takes
milliseconds on an idle machine; the margin is for a loaded 2-core CI runner)."""

NO_ERROR, PROTOCOL_ERROR, REFUSED_STREAM, CANCEL, ENHANCE_YOUR_CALM = (
    0x0,
    0x1,
    0x7,
    0x8,
    0xB,
)
RESET_BURST = 1000
"""Stream resets and refusals a connection may cause at once (the default)."""
PREDICT = "/tensorflow.serving.PredictionService/Predict"


@dataclass(frozen=True)
class Target:
    """One gRPC port under attack and the process behind it."""

    name: str
    port: int
    process: ServerProcess
    metadata: tuple[tuple[str, str], ...]
    """What a normal call sends (the gateway's API key)."""


class HeaderBlocks:
    """gRPC request HEADERS frames encoded with one HPACK table: built before a
    connection is opened, a large flood does not leave it idle meanwhile."""

    def __init__(self) -> None:
        self.encoder = hpack.Encoder()

    def block(self, path: str, extra: tuple[tuple[str, str], ...] = ()) -> bytes:
        """A gRPC request's header block, encoded with this connection's table."""
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "127.0.0.1"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *extra,
        ]
        return bytes(self.encoder.encode(headers))

    def headers(
        self,
        stream: int,
        path: str = PREDICT,
        *,
        end: bool = False,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> bytes:
        frame = HeadersFrame(stream, self.block(path, extra))
        frame.flags.add("END_HEADERS")
        if end:
            frame.flags.add("END_STREAM")
        return bytes(frame.serialize())


class RawClient(HeaderBlocks):
    """One HTTP/2 connection driven frame by frame.

    Args:
        port: The server's port on 127.0.0.1.
        receive_buffer: SO_RCVBUF, when set.
        settings: Send the preface and SETTINGS at once.
        encoder: The encoder of :class:`HeaderBlocks` built before
            connecting, so the server's table follows theirs.
    """

    def __init__(
        self,
        port: int,
        *,
        receive_buffer: int = 0,
        settings: bool = True,
        encoder: hpack.Encoder | None = None,
    ):
        super().__init__()
        self.sock = socket.socket()
        if receive_buffer:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        self.encoder = encoder or hpack.Encoder()
        self.received = bytearray()
        self.closed = False
        if settings:
            self.send(PREFACE + SettingsFrame(0).serialize())

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def frames(self, timeout: float) -> list[Frame]:
        """Frames received within ``timeout`` (or until the server closes)."""
        deadline = time.monotonic() + timeout
        while not self.closed and time.monotonic() < deadline:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                chunk = self.sock.recv(1 << 20)
            except TimeoutError:
                break
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.closed = True
                break
            self.received += chunk
        return self._parse()

    def _parse(self) -> list[Frame]:
        found: list[Frame] = []
        data = self.received
        while len(data) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(data[:9]))
            if len(data) < 9 + length:
                break
            frame.parse_body(memoryview(data[9 : 9 + length]))
            found.append(frame)
            del data[: 9 + length]
        return found

    def until_goaway(self, timeout: float) -> tuple[int | None, list[Frame]]:
        """Read until GOAWAY or close: its error code (None: closed without
        one) and every frame seen; fails when neither happens in time."""
        deadline = time.monotonic() + timeout
        seen: list[Frame] = []
        while time.monotonic() < deadline:
            seen += self.frames(0.2)
            for frame in seen:
                if isinstance(frame, GoAwayFrame):
                    return frame.error_code, seen
            if self.closed:
                return None, seen
        raise AssertionError(f"neither GOAWAY nor close in {timeout} s: {seen[-5:]}")

    def close(self) -> None:
        self.sock.close()


def continuation(stream: int, payload: bytes = b"", end: bool = False) -> bytes:
    frame = ContinuationFrame(stream, payload)
    if end:
        frame.flags.add("END_HEADERS")
    return bytes(frame.serialize())


def data(stream: int, payload: bytes, end: bool = False) -> bytes:
    frame = DataFrame(stream, payload)
    if end:
        frame.flags.add("END_STREAM")
    return bytes(frame.serialize())


def reset(stream: int, code: int = CANCEL) -> bytes:
    return bytes(RstStreamFrame(stream, error_code=code).serialize())


def grpc_message(payload: bytes, declared: int | None = None) -> bytes:
    """gRPC's length-prefixed message (``declared`` may lie about the length)."""
    length = len(payload) if declared is None else declared
    return b"\x00" + length.to_bytes(4, "big") + payload


def statuses(frames: list[Frame]) -> dict[int, str]:
    """Stream -> grpc-status of the trailers received (decoded in order)."""
    decoder = hpack.Decoder()
    found: dict[int, str] = {}
    for frame in frames:
        if isinstance(frame, HeadersFrame):
            for name, value in decoder.decode(bytes(frame.data)):
                if name == "grpc-status":
                    found[frame.stream_id] = value
    return found


HEALTH_RECOVERY_SECONDS = 15.0
"""How long health may stay NOT_SERVING after an attack. The gateway's health
follows its backends' readiness, re-checked each second under a 2 s deadline: on a
loaded machine the check that ran during the flood may have timed out, and health
reads SERVING again from the next check that completes."""


def timed_health_call(target: Target) -> float:
    """Seconds one health Check takes on a fresh connection (it must answer, and
    the server must be SERVING, at once or within HEALTH_RECOVERY_SECONDS)."""
    with grpc.insecure_channel(f"127.0.0.1:{target.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="")

        def check() -> int:
            answer = stub.Check(
                request, timeout=NORMAL_CALL_SECONDS * 5, metadata=target.metadata
            )
            return int(answer.status)

        started = time.perf_counter()
        status = check()
        seconds = time.perf_counter() - started
        recover_by = time.monotonic() + HEALTH_RECOVERY_SECONDS
        while status != health_pb2.HealthCheckResponse.SERVING:
            assert time.monotonic() < recover_by, "health stayed NOT_SERVING"
            time.sleep(0.25)
            status = check()
    record("health call s", seconds)
    return seconds
