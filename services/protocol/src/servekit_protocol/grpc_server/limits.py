"""The HTTP/2 limits of the gRPC server: what one client may make it hold or do.

Each default is near nghttp2's or grpcio's choice for the same knob; the two
services take an :class:`Http2Limits` from their settings and pass it down.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from h2.settings import SettingCodes, Settings

KIB = 1024
MIB = 1024 * 1024


def _limit(default: float, doc: str) -> Any:
    # The help text rides in the field's metadata, not in an attribute
    # docstring: reading those back needs ast.parse at run time, which is not
    # thread-safe in CPython 3.11 ("AST constructor recursion depth mismatch").
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class Http2Limits:
    """Per-connection and per-process limits of the HTTP/2 gRPC server."""

    max_concurrent_streams: int = _limit(
        100,
        "SETTINGS_MAX_CONCURRENT_STREAMS advertised and enforced (nghttp2 and grpcio's "
        "usual 100); a stream over it is refused alone with RST_STREAM REFUSED_STREAM "
        "(RFC 9113 §5.1.2, as grpc's chttp2 transport does), which spends the reset "
        "allowance.",
    )
    max_header_list_size: int = _limit(
        16 * KIB,
        "SETTINGS_MAX_HEADER_LIST_SIZE advertised and enforced (grpcio: 16 KiB); a "
        "compressed header block is also refused above it before it is decoded.",
    )
    max_continuation_frames: int = _limit(
        8,
        "CONTINUATION frames accepted after one HEADERS frame (CVE-2024-27316); counted "
        "before the block is buffered.",
    )
    stream_window_bytes: int = _limit(
        1 * MIB,
        "SETTINGS_INITIAL_WINDOW_SIZE: request bytes a stream may send unread.",
    )
    connection_window_bytes: int = _limit(
        4 * MIB,
        "Receive window of the whole connection.",
    )
    max_buffered_request_bytes: int = _limit(
        32 * MIB,
        "Request bytes held per connection before window updates stop (the oldest "
        "unfinished request keeps going, so a message up to the size limit fits).",
    )
    reset_burst: int = _limit(
        1000,
        "Stream resets and stream errors a connection may cause at once (nghttp2's stream "
        "reset burst) before GOAWAY ENHANCE_YOUR_CALM (CVE-2023-44487).",
    )
    reset_rate_per_second: float = _limit(
        33.0,
        "Refill rate of that allowance (nghttp2's 33 per second).",
    )
    max_queued_control_frames: int = _limit(
        1000,
        "PING and SETTINGS answers queued for a client that does not read (nghttp2's max "
        "outbound ACK); over it the connection is dropped.",
    )
    write_high_water_bytes: int = _limit(
        256 * KIB,
        "Unsent bytes at which the connection stops reading and answers wait.",
    )
    write_low_water_bytes: int = _limit(
        64 * KIB,
        "Unsent bytes at which reading and writing resume.",
    )
    max_data_frame_bytes: int = _limit(
        64 * KIB,
        "Largest DATA frame sent, when the client allows frames that large (grpcio "
        "allows 16 MiB; nghttp2 sends 16 KiB): h2 copies each frame a few times as it "
        "builds it, so megabyte frames are megabytes copied at once on the event loop, "
        "while 16 KiB frames cost twice the CPU of 64 KiB ones in h2's per-frame work.",
    )
    handshake_timeout_seconds: float = _limit(
        10.0,
        "Time from accept to the client's preface and SETTINGS.",
    )
    idle_timeout_seconds: float = _limit(
        300.0,
        "Time a connection with no call under way is kept (grpcio's max_connection_idle "
        "is off by default; nginx's keep-alive is 75 s).",
    )
    header_read_timeout_seconds: float = _limit(
        10.0,
        "Time from a header block's first frame to its last.",
    )
    body_read_timeout_seconds: float = _limit(
        60.0,
        "Time from a request's headers to the end of its body.",
    )
    send_stall_timeout_seconds: float = _limit(
        60.0,
        "Time an answer may wait for a client that neither reads nor opens its flow- "
        "control window before the connection is dropped.",
    )
    max_connections: int = _limit(
        1000,
        "Connections held at once by the process's gRPC server; more are sent GOAWAY and "
        "closed (with a log line).",
    )

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if value <= 0:
                raise ValueError(f"{item.name} must be positive, not {value}")
        if self.write_low_water_bytes > self.write_high_water_bytes:
            raise ValueError("write_low_water_bytes is above write_high_water_bytes")
        if not 16 * KIB <= self.max_data_frame_bytes < 2**24:
            raise ValueError("max_data_frame_bytes must be in [16384, 2**24)")
        if not 65_535 <= self.stream_window_bytes < 2**31:
            raise ValueError("stream_window_bytes must be in [65535, 2**31)")
        if not 65_535 <= self.connection_window_bytes < 2**31:
            raise ValueError("connection_window_bytes must be in [65535, 2**31)")


def local_settings(limits: Http2Limits, *, advertised: bool) -> Settings:
    """The SETTINGS the server sends (``advertised``) or holds ``h2`` to: the
    stream limit is only advertised, since ``h2`` would end the whole
    connection over it where the server refuses the one stream."""
    values = {
        SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_list_size,
        SettingCodes.INITIAL_WINDOW_SIZE: limits.stream_window_bytes,
    }
    if advertised:
        values[SettingCodes.MAX_CONCURRENT_STREAMS] = limits.max_concurrent_streams
    return Settings(client=False, initial_values=values)


def described_fields() -> dict[str, tuple[type, object, str]]:
    """Each :class:`Http2Limits` field: its type, default and help text (for
    command-line flags and their help)."""
    return {
        item.name: (type(item.default), item.default, item.metadata["doc"])
        for item in fields(Http2Limits)
    }
