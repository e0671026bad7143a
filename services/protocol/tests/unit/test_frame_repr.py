"""The short frame ``repr`` is ``hyperframe``'s string, without copying the body."""

from __future__ import annotations

import tracemalloc

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, RequestReceived, StreamEnded
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    ExtensionFrame,
    Frame,
    HeadersFrame,
)
from servekit_protocol.grpc_server import frame_repr

frame_repr.install()

_LENGTHS = (0, 1, 9, 10, 11, 100, 16_384)


def _parsed(frame: Frame) -> Frame:
    """The frame as ``h2`` gets it: parsed from its bytes."""
    data = frame.serialize()
    parsed, length = Frame.parse_frame_header(memoryview(data[:9]))
    parsed.parse_body(memoryview(data[9 : 9 + length]))
    return parsed


def _data_frames() -> list[Frame]:
    frames: list[Frame] = []
    for length in _LENGTHS:
        payload = bytes(range(256)) * (length // 256) + bytes(range(length % 256))
        frames.append(DataFrame(1, payload))
        frames.append(DataFrame(3, payload, flags=["END_STREAM"]))
        for pad in (0, 1, 5, 20, 255):
            frames.append(DataFrame(5, payload, flags=["PADDED"], pad_length=pad))
    return frames


def _other_frames() -> list[Frame]:
    frames: list[Frame] = []
    for length in _LENGTHS:
        block = bytes((7 * i) % 256 for i in range(length))
        frames.append(HeadersFrame(1, block, flags=["END_HEADERS"]))
        frames.append(
            HeadersFrame(
                3,
                block,
                flags=["PRIORITY", "PADDED"],
                pad_length=3,
                depends_on=1,
                stream_weight=200,
                exclusive=True,
            )
        )
        frames.append(ContinuationFrame(1, block, flags=["END_HEADERS"]))
        frames.append(ExtensionFrame(0xFA, 1, flag_byte=0x3, body=block))
    return frames


@pytest.mark.parametrize(
    "frame", [*_data_frames(), *_other_frames()], ids=lambda frame: repr(frame)[:60]
)
def test_the_short_repr_is_hyperframes_own(frame: Frame) -> None:
    assert repr(frame) == frame_repr.original_repr(frame)
    parsed = _parsed(frame)
    assert repr(parsed) == frame_repr.original_repr(parsed)


def test_a_large_data_frames_repr_copies_nothing() -> None:
    frame = DataFrame(1, b"\x01" * (16 * 2**20), flags=["PADDED"], pad_length=9)
    tracemalloc.start()
    try:
        repr(frame)
        _, short_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        frame_repr.original_repr(frame)
        _, original_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # hyperframe's own serializes (16 MiB) and hexlifies (32 MiB) the body.
    assert original_peak > 16 * 2**20
    assert short_peak < 4096


def test_h2_receives_padded_frames_as_before() -> None:
    client = H2Connection(H2Configuration(client_side=True))
    client.initiate_connection()
    client.send_headers(
        1,
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/a.B/C"),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
        ],
    )
    bodies = [b"\x00\x00\x00\x00\x05hello", b"x" * 5000, b""]
    client.send_data(1, bodies[0], pad_length=7)
    client.send_data(1, bodies[1])
    client.send_data(1, bodies[2], end_stream=True, pad_length=0)
    server = H2Connection(H2Configuration(client_side=False))
    server.initiate_connection()
    events = server.receive_data(client.data_to_send())
    received = [e for e in events if isinstance(e, DataReceived)]
    assert [e.data for e in received] == bodies
    # Padding counts against flow control: the pad length byte and the pad.
    assert [e.flow_controlled_length for e in received] == [10 + 8, 5000, 1]
    assert any(isinstance(e, RequestReceived) for e in events)
    assert isinstance(events[-1], StreamEnded)
