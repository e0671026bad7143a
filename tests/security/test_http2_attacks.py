"""HTTP/2 attacks on both gRPC ports (model server and gateway), each bounded.

Every test starts from the real servers of :func:`http2_stack`, attacks one gRPC
port over 127.0.0.1 with a raw HTTP/2 client (:mod:`tests.security.http2`), and
asserts the bounded effect: the GOAWAY code or the close, the server's memory
growth (``VmRSS`` from ``/proc/<pid>/status``), a normal call answered meanwhile,
and timeouts that fire on time. The figures are listed in the protocol README.
"""

from __future__ import annotations

import contextlib
import time
import zlib

import pytest
from hyperframe.frame import (
    Frame,
    GoAwayFrame,
    HeadersFrame,
    RstStreamFrame,
    SettingsFrame,
)

from tests.security.figures import record
from tests.security.http2 import (
    BODY_TIMEOUT,
    CANCEL,
    CLOSING,
    ENHANCE_YOUR_CALM,
    HANDSHAKE_TIMEOUT,
    HEADER_TIMEOUT,
    IDLE_TIMEOUT,
    MAX_BUFFERED,
    MAX_CONNECTIONS,
    NO_ERROR,
    NORMAL_CALL_SECONDS,
    PREDICT,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    RESET_BURST,
    SEND_STALL_TIMEOUT,
    SLACK,
    HeaderBlocks,
    RawClient,
    Target,
    continuation,
    data,
    grpc_message,
    reset,
    statuses,
    timed_health_call,
)
from tests.security.stack import assert_no_traceback, rss_bytes

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


def _grown(target: Target, before: int) -> float:
    grown = (rss_bytes(target.process.pid) - before) / MIB
    record("VmRSS growth MiB", grown)
    return grown


def test_rapid_reset_ends_in_goaway_enhance_your_calm(target: Target) -> None:
    # CVE-2023-44487: streams opened and reset at once, 5,000 of them.
    before = rss_bytes(target.process.pid)
    # Built first: on a loaded machine encoding the flood on an open connection
    # can outlast the tests' 1.5 s idle timeout, which ends it with NO_ERROR.
    blocks = HeaderBlocks()
    batch = b"".join(
        blocks.headers(stream, end=True) + reset(stream)
        for stream in range(1, 10_001, 2)
    )
    client = RawClient(target.port, encoder=blocks.encoder)
    # The connection may close before all of it is taken.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        client.send(batch)
    code, _ = client.until_goaway(5)
    assert code == ENHANCE_YOUR_CALM
    assert timed_health_call(target) < NORMAL_CALL_SECONDS
    assert _grown(target, before) < 30


def _advertised(client: RawClient) -> dict[int, int]:
    return {
        key: value
        for frame in client.frames(1.0)
        if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags
        for key, value in frame.settings.items()
    }


def _refused(frames: list[Frame]) -> set[int]:
    return {
        f.stream_id
        for f in frames
        if isinstance(f, RstStreamFrame) and f.error_code == REFUSED_STREAM
    }


def test_the_stream_over_the_advertised_limit_is_refused_alone(
    target: Target,
) -> None:
    client = RawClient(target.port)
    advertised = _advertised(client)
    assert advertised[SettingsFrame.MAX_CONCURRENT_STREAMS] == 100
    assert advertised[SettingsFrame.MAX_HEADER_LIST_SIZE] == 16 * 1024
    # 100 streams open (99 wait for their bodies), the 101st is refused; the
    # first one's body follows.
    client.send(
        b"".join(client.headers(s, extra=target.metadata) for s in range(1, 201, 2))
        + client.headers(201, extra=target.metadata)
        + data(1, grpc_message(b""), end=True)
    )
    frames = _until_answered(client, 1)
    assert _refused(frames) == {201}
    assert not any(isinstance(f, GoAwayFrame) for f in frames)
    # The connection goes on: the stream the first call freed takes a new one.
    client.send(
        client.headers(203, extra=target.metadata)
        + data(203, grpc_message(b""), end=True)
    )
    frames += _until_answered(client, 203, frames)
    assert set(statuses(frames)) == {1, 203}
    assert _refused(frames) == {201}
    assert not client.closed
    assert timed_health_call(target) < NORMAL_CALL_SECONDS


def _until_answered(
    client: RawClient, stream: int, earlier: list[Frame] | None = None
) -> list[Frame]:
    """Frames read until ``stream`` has its status (at most 5 s)."""
    seen: list[Frame] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not client.closed:
        seen += client.frames(0.2)
        if stream in statuses([*(earlier or []), *seen]):
            break
    return seen


def test_refusing_streams_spends_the_reset_allowance(target: Target) -> None:
    # Opening streams past the limit over and over costs the server a refusal
    # each: after the reset burst, the connection is sent away.
    blocks = HeaderBlocks()  # built before connecting, as in the rapid reset test
    opened = b"".join(
        blocks.headers(s, extra=target.metadata) for s in range(1, 201, 2)
    )
    extra = b"".join(
        blocks.headers(s, extra=target.metadata)
        for s in range(201, 201 + 2 * (RESET_BURST + 200), 2)
    )
    client = RawClient(target.port, encoder=blocks.encoder)
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        client.send(opened + extra)
    code, frames = client.until_goaway(5)
    assert code == ENHANCE_YOUR_CALM
    refused = _refused(frames)
    # The allowance refills at 33 a second while the flood is read.
    assert RESET_BURST <= len(refused) < RESET_BURST + 200
    assert timed_health_call(target) < NORMAL_CALL_SECONDS


def test_a_continuation_flood_is_refused_after_eight(target: Target) -> None:
    # CVE-2024-27316: a header block that never ends, in empty CONTINUATIONs.
    client = RawClient(target.port)
    opening = HeadersFrame(1, client.block(PREDICT))
    client.send(bytes(opening.serialize()) + continuation(1) * 5_000)
    code, _ = client.until_goaway(5)
    assert code == ENHANCE_YOUR_CALM
    assert timed_health_call(target) < NORMAL_CALL_SECONDS


def test_header_blocks_over_16_kib_are_refused_before_decoding(target: Target) -> None:
    # 1 MiB of HPACK table-size updates, as 64 frames of 16 KiB.
    client = RawClient(target.port)
    updates = b"\x20" * 16_384
    flood = bytes(HeadersFrame(1, updates).serialize()) + b"".join(
        continuation(1, updates, end=index == 62) for index in range(63)
    )
    started = time.perf_counter()
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        client.send(flood)
    code, _ = client.until_goaway(5)
    assert code == ENHANCE_YOUR_CALM
    assert time.perf_counter() - started < NORMAL_CALL_SECONDS
    # One header over the list limit, in one frame.
    big = RawClient(target.port)
    big.send(big.headers(1, end=True, extra=(("x-big", "v" * 17_000),)))
    code, _ = big.until_goaway(5)
    assert code == ENHANCE_YOUR_CALM
    assert timed_health_call(target) < NORMAL_CALL_SECONDS


def test_a_ping_flood_from_a_client_that_does_not_read_is_bounded(
    target: Target,
) -> None:
    # 6.8 MiB of PINGs from a client that reads nothing: the server stops
    # reading or drops the connection (over 1000 unread answers); either way
    # its memory stays flat and the connection is gone within the idle timeout.
    before = rss_bytes(target.process.pid)
    client = RawClient(target.port, receive_buffer=4096)
    ping = b"\x00\x00\x08\x06\x00\x00\x00\x00\x00" + b"12345678"
    client.sock.settimeout(3)
    try:
        for _ in range(100):
            client.send(ping * 4096)
    except (TimeoutError, BrokenPipeError, ConnectionResetError):
        pass
    assert _grown(target, before) < 20
    assert timed_health_call(target) < NORMAL_CALL_SECONDS
    code, _ = client.until_goaway(IDLE_TIMEOUT + CLOSING + SLACK + 3)
    assert code in (None, NO_ERROR)  # dropped, or sent away when idle


def test_error_answers_wait_for_a_client_that_does_not_read(target: Target) -> None:
    # Each request names an unknown 4 KB method from HPACK's table (15 bytes a
    # request); the answers must not pile up in the server while nobody reads.
    before = rss_bytes(target.process.pid)
    client = RawClient(target.port, receive_buffer=4096)
    client.sock.settimeout(3)
    path = "/x/" + "%" * 4000
    first = client.headers(1, path, end=True)
    indexed = HeadersFrame(3, client.block(path))
    indexed.flags.add("END_HEADERS")
    indexed.flags.add("END_STREAM")
    again = bytes(indexed.serialize())
    client.send(first)
    sent = 1
    try:
        for start in range(3, 200_000, 2_000):
            client.send(
                b"".join(
                    again[:5] + stream.to_bytes(4, "big") + again[9:]
                    for stream in range(start, start + 2_000, 2)
                )
            )
            sent += 1_000
    except (TimeoutError, BrokenPipeError, ConnectionResetError):
        pass
    grown = _grown(target, before)
    assert grown < 30, f"+{grown:.0f} MB after {sent} unread error answers"
    assert timed_health_call(target) < NORMAL_CALL_SECONDS
    client.close()


def test_a_zero_window_reader_is_dropped_after_the_send_stall_timeout(
    target: Target,
) -> None:
    client = RawClient(target.port, settings=False)
    zero = SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 0})
    client.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(zero.serialize()))
    status = "/tensorflow.serving.ModelService/GetModelStatus"
    request = grpc_message(b"\n\x08\n\x06linear")
    extra = target.metadata
    client.send(
        b"".join(
            client.headers(s, status, extra=extra) + data(s, request, end=True)
            for s in range(1, 41, 2)
        )
    )
    started = time.monotonic()
    code, _ = client.until_goaway(SEND_STALL_TIMEOUT + SLACK + 2)
    assert code is None  # dropped, not asked to go away: it does not read
    assert time.monotonic() - started < SEND_STALL_TIMEOUT + SLACK + 1
    assert timed_health_call(target) < NORMAL_CALL_SECONDS


def test_unfinished_bodies_hold_bounded_memory_and_are_reset(target: Target) -> None:
    # Eight streams each declaring a message just under the 4 MiB limit of these
    # servers, sent as far as the windows allow and never finished: 32 MiB if
    # nothing held the client back.
    before = rss_bytes(target.process.pid)
    client = RawClient(target.port)
    chunk = b"\x01" * 16_384
    frames = [client.headers(s, extra=target.metadata) for s in range(1, 17, 2)]
    frames += [data(s, grpc_message(b"", 4 * MIB - 64)) for s in range(1, 17, 2)]
    client.send(b"".join(frames))
    sent = 0
    client.sock.settimeout(0.5)
    try:
        while sent < 32 * MIB:
            for stream in range(1, 17, 2):
                client.send(data(stream, chunk))
                sent += len(chunk)
    except (TimeoutError, BrokenPipeError, ConnectionResetError):
        pass
    # What the server may hold: the buffer cap, the oldest request (which keeps
    # going) and the connection window's unacknowledged bytes.
    grown = _grown(target, before)
    bound = (MAX_BUFFERED + 4 * MIB + 4 * MIB) / MIB + 8
    assert grown < bound, f"+{grown:.0f} MB with {sent / MIB:.0f} MiB sent"
    frames_seen = client.frames(BODY_TIMEOUT + SLACK)
    refused = {
        f.stream_id
        for f in frames_seen
        if isinstance(f, RstStreamFrame) and f.error_code in (CANCEL, NO_ERROR)
    }
    answered = set(statuses(frames_seen))
    assert refused | answered >= set(range(1, 17, 2)) or client.closed
    assert timed_health_call(target) < NORMAL_CALL_SECONDS


def test_silent_idle_and_slow_connections_are_closed_on_time(target: Target) -> None:
    started = time.monotonic()
    silent = RawClient(target.port, settings=False)
    idle = RawClient(target.port)
    slow_headers = RawClient(target.port)
    slow_headers.send(bytes(HeadersFrame(1, slow_headers.block(PREDICT)).serialize()))
    slow_body = RawClient(target.port)
    slow_body.send(slow_body.headers(1, extra=target.metadata))
    code, _ = silent.until_goaway(HANDSHAKE_TIMEOUT + SLACK)
    assert code in (None, PROTOCOL_ERROR)
    code, _ = slow_headers.until_goaway(HEADER_TIMEOUT + SLACK)
    assert code == PROTOCOL_ERROR
    reset_in_time = [
        f
        for f in slow_body.frames(BODY_TIMEOUT + SLACK - (time.monotonic() - started))
        if isinstance(f, RstStreamFrame) and f.stream_id == 1
    ]
    assert reset_in_time, "the unfinished body was not reset in the body timeout"
    code, _ = idle.until_goaway(IDLE_TIMEOUT + SLACK)
    assert code == NO_ERROR
    assert time.monotonic() - started < IDLE_TIMEOUT + SLACK + 0.5


def test_connections_over_the_cap_are_refused_with_goaway(target: Target) -> None:
    held = [RawClient(target.port) for _ in range(MAX_CONNECTIONS)]
    try:
        extra = RawClient(target.port)
        code, frames = extra.until_goaway(5)
        assert code == NO_ERROR
        assert any(
            isinstance(f, GoAwayFrame) and b"too many" in f.additional_data
            for f in frames
        )
    finally:
        for client in held:
            client.close()
    time.sleep(0.3)
    assert timed_health_call(target) < NORMAL_CALL_SECONDS
    assert "gRPC connections refused" in target.process.log_text()


@pytest.mark.parametrize(
    "headers",
    [
        (
            (":method", "POST"),
            (":scheme", "http"),
            (":path", PREDICT),
            ("X-Upper", "1"),
        ),
        ((":method", "POST"), (":scheme", "http"), (":authority", "a")),
        (
            (":method", "POST"),
            (":scheme", "http"),
            (":path", PREDICT),
            ("connection", "close"),
        ),
        (
            (":method", "POST"),
            (":scheme", "http"),
            (":path", PREDICT),
            ("content-length", "3"),
        ),
    ],
    ids=["upper-case-name", "no-path", "connection-header", "content-length-mismatch"],
)
def test_malformed_requests_are_refused(
    target: Target, headers: tuple[tuple[str, str], ...]
) -> None:
    client = RawClient(target.port)
    frame = HeadersFrame(1, bytes(client.encoder.encode(list(headers))))
    frame.flags.add("END_HEADERS")
    client.send(bytes(frame.serialize()) + data(1, grpc_message(b""), end=True))
    code, frames = client.until_goaway(5)
    assert code == PROTOCOL_ERROR
    assert not statuses(frames), "a malformed request was served"


def test_malformed_binary_metadata_is_invalid_argument(target: Target) -> None:
    client = RawClient(target.port)
    extra = (*target.metadata, ("x-trace-bin", "!!not base64!!"))
    client.send(client.headers(1, extra=extra) + data(1, grpc_message(b""), end=True))
    frames = client.frames(3)
    assert statuses(frames) == {1: "3"}
    log = target.process.log_text()
    assert log.count("malformed x-trace-bin metadata") == 1
    assert_no_traceback(target.process)


def test_the_gateway_refuses_calls_without_a_key_before_their_bodies(
    gateway_target: Target,
) -> None:
    client = RawClient(gateway_target.port)
    # Six calls announcing 16 MiB bodies, none of it sent: the answers come
    # from the headers alone.
    client.send(b"".join(client.headers(s) for s in range(1, 13, 2)))
    frames = client.frames(3)
    assert statuses(frames) == dict.fromkeys(range(1, 13, 2), "16")
    assert {f.stream_id for f in frames if isinstance(f, RstStreamFrame)} == set(
        range(1, 13, 2)
    )


def test_a_compressed_message_bomb_stops_at_the_message_limit(target: Target) -> None:
    # About 250 KiB of gzip declaring 256 MiB of zeros, three times on one
    # connection: refused once inflation passes the 4 MiB message limit.
    compressor = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    zeros = bytes(MIB)
    bomb = b"".join(compressor.compress(zeros) for _ in range(256))
    bomb += compressor.flush()
    assert len(bomb) < 300 * 1024
    framed = b"\x01" + len(bomb).to_bytes(4, "big") + bomb
    before = rss_bytes(target.process.pid)
    client = RawClient(target.port)
    extra = (*target.metadata, ("grpc-encoding", "gzip"))
    seen: list[Frame] = []
    for stream in (1, 3, 5):
        pieces = [framed[i : i + 16_384] for i in range(0, len(framed), 16_384)]
        client.send(
            client.headers(stream, extra=extra)
            + b"".join(data(stream, piece) for piece in pieces[:-1])
            + data(stream, pieces[-1], end=True)
        )
        seen += _until_answered(client, stream, seen)
    assert statuses(seen) == dict.fromkeys((1, 3, 5), "8")  # RESOURCE_EXHAUSTED
    assert _grown(target, before) < 64
    assert timed_health_call(target) < NORMAL_CALL_SECONDS
    assert_no_traceback(target.process)
