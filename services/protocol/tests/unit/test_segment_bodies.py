"""Large ``:predict`` bodies parsed in a worker with the body and the decoded
arrays moved through shared memory segments (servekit_protocol.segment_bodies),
real worker processes."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterator

import numpy as np
import orjson
import pytest
from servekit_protocol import json_codec, segment_bodies, segments
from servekit_protocol.errors import InvalidArgument
from servekit_protocol.json_codec.offload import BodyParsers
from servekit_protocol.tensor_limits import TensorLimits

SPECS = {
    "x": json_codec.TensorSpec("DT_DOUBLE", None),
    "n": json_codec.TensorSpec("DT_INT64", None),
    "s": json_codec.TensorSpec("DT_STRING", None),
}


@pytest.fixture(scope="module")
def parsers() -> Iterator[BodyParsers]:
    running = BodyParsers(workers=1, threshold_bytes=1)
    try:
        yield running
    finally:
        running.close()


def _own_segments() -> list[str]:
    prefix = f"servekit-{os.getpid()}-"
    return [
        name
        for name in os.listdir(segments.default_directory())
        if name.startswith(prefix)
    ]


async def _settled(timeout: float = 10.0) -> list[str]:
    # Unlinking runs in a thread that is not awaited.
    deadline = time.monotonic() + timeout
    while _own_segments() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return _own_segments()


def _body(rows: int) -> bytes:
    rng = np.random.default_rng(5)
    return orjson.dumps(
        {
            "inputs": {
                "x": rng.normal(size=(rows, 4)).tolist(),
                "n": rng.integers(-(2**40), 2**40, size=rows).tolist(),
                "s": [f"row {index}" for index in range(rows)],
            }
        }
    )


@pytest.mark.parametrize("rows", [1, 50_000])
async def test_a_body_parsed_through_segments_is_the_body_parsed_in_place(
    parsers: BodyParsers, rows: int
) -> None:
    body = _body(rows)
    in_place = json_codec.parse_predict_request(body, SPECS, None)
    parsed = await segment_bodies.parse_predict(parsers, body, SPECS, None)
    assert parsed.signature_name == in_place.signature_name
    assert parsed.format == in_place.format
    assert list(parsed.inputs) == list(in_place.inputs)
    for name, array in in_place.inputs.items():
        assert parsed.inputs[name].dtype == array.dtype
        assert parsed.inputs[name].shape == array.shape
        assert parsed.inputs[name].tolist() == array.tolist()
        assert parsed.inputs[name].flags.writeable
    assert await _settled() == []


async def test_a_bad_body_or_one_over_the_limits_is_refused_and_nothing_is_left(
    parsers: BodyParsers,
) -> None:
    with pytest.raises(InvalidArgument, match="JSON Parse error"):
        await segment_bodies.parse_predict(parsers, b'{"inputs": [1,', SPECS, None)
    with pytest.raises(InvalidArgument):
        await segment_bodies.parse_predict(
            parsers, _body(100), SPECS, TensorLimits(max_elements=10)
        )
    assert await _settled() == []


async def test_a_cancelled_parse_removes_its_segments(parsers: BodyParsers) -> None:
    call = asyncio.ensure_future(
        segment_bodies.parse_predict(parsers, _body(200_000), SPECS, None)
    )
    await asyncio.sleep(0.05)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert await _settled(timeout=60) == []


def _read_in_worker(body: bytes, parent: int, note: str) -> tuple[int, str, str, bool]:
    """What a worker got: its pid, the note, the body's signature name, and
    whether the parent's body segment existed meanwhile."""
    document = orjson.loads(body)
    prefix = f"servekit-{parent}-"
    in_segment = any(
        name.startswith(prefix) and name.endswith("-body")
        for name in os.listdir(segments.default_directory())
    )
    return os.getpid(), note, str(document.get("signature_name", "")), in_segment


def _refuse_body(body: bytes) -> None:
    raise InvalidArgument(f"refused {len(body)} bytes")


def _slow_read(body: bytes, seconds: float) -> int:
    time.sleep(seconds)
    return len(body)


async def test_a_body_read_in_a_worker_arrives_whole_through_a_segment(
    parsers: BodyParsers,
) -> None:
    body = orjson.dumps({"signature_name": "séries", "inputs": {"x": [1.5] * 5000}})
    pid, note, name, in_segment = await segment_bodies.run_on_body(
        parsers, _read_in_worker, body, os.getpid(), "n"
    )
    assert pid != os.getpid()
    assert (note, name) == ("n", "séries")
    assert in_segment
    examples = orjson.dumps({"examples": [{"x": [float(i)]} for i in range(3000)]})
    assert await segment_bodies.run_on_body(
        parsers, json_codec.parse_examples_request, examples
    ) == json_codec.parse_examples_request(examples)
    assert await _settled() == []


async def test_a_body_read_s_error_comes_back_and_nothing_is_left(
    parsers: BodyParsers,
) -> None:
    with pytest.raises(InvalidArgument, match="refused 70000 bytes"):
        await segment_bodies.run_on_body(parsers, _refuse_body, b"x" * 70_000)
    assert await _settled() == []


async def test_a_cancelled_body_read_removes_its_segment(
    parsers: BodyParsers,
) -> None:
    call = asyncio.ensure_future(
        segment_bodies.run_on_body(parsers, _slow_read, b"y" * 100_000, 0.5)
    )
    await asyncio.sleep(0.1)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    # The worker still reads it: the segment stays until it has answered.
    assert await _settled(timeout=30) == []


@pytest.fixture(scope="module")
def parsers_without_room(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[BodyParsers]:
    # A folder that does not exist: every segment's open fails, the branch a
    # full /dev/shm (ENOSPC) takes.
    missing = tmp_path_factory.mktemp("no-room") / "missing"
    running = BodyParsers(workers=1, threshold_bytes=1, segment_dir=str(missing))
    try:
        yield running
    finally:
        running.close()


def _assert_parsed_as_in_place(parsed: json_codec.PredictBody, body: bytes) -> None:
    in_place = json_codec.parse_predict_request(body, SPECS, None)
    assert (parsed.signature_name, parsed.format) == (
        in_place.signature_name,
        in_place.format,
    )
    assert list(parsed.inputs) == list(in_place.inputs)
    for name, array in in_place.inputs.items():
        assert parsed.inputs[name].dtype == array.dtype
        assert parsed.inputs[name].shape == array.shape
        assert parsed.inputs[name].tolist() == array.tolist()


async def test_a_body_without_room_goes_through_pipes_of_its_own(
    parsers_without_room: BodyParsers, caplog: pytest.LogCaptureFixture
) -> None:
    body = _body(50_000)
    with caplog.at_level(logging.WARNING):
        parsed = await segment_bodies.parse_predict(
            parsers_without_room, body, SPECS, None
        )
    _assert_parsed_as_in_place(parsed, body)
    [warning] = caplog.records
    assert warning.getMessage().startswith(
        "A large request body went to its worker through a pipe of its own"
    )


async def test_a_bad_body_without_room_is_refused_as_with_room(
    parsers_without_room: BodyParsers,
) -> None:
    with pytest.raises(InvalidArgument, match="JSON Parse error"):
        await segment_bodies.parse_predict(
            parsers_without_room, b'{"inputs": [1,', SPECS, None
        )
    with pytest.raises(InvalidArgument):
        await segment_bodies.parse_predict(
            parsers_without_room, _body(100), SPECS, TensorLimits(max_elements=10)
        )
    # The worker is still there, and its pipes work.
    body = _body(10)
    parsed = await segment_bodies.parse_predict(parsers_without_room, body, SPECS, None)
    _assert_parsed_as_in_place(parsed, body)


async def test_arrays_without_room_come_back_through_the_worker_s_pipe(
    parsers: BodyParsers,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The worker's write of the arrays' segment fails for real (O_EXCL on an
    # existing name) and it removes the file, as a part written to a full
    # /dev/shm; the body's segment has room.
    taken = segments.new_path(segments.default_directory(), "taken")
    segments.write_bytes(taken, b"")
    new_path = segments.new_path
    monkeypatch.setattr(
        segments,
        "new_path",
        lambda folder, role: taken if role == "inputs" else new_path(folder, role),
    )
    body = _body(50_000)
    with caplog.at_level(logging.WARNING):
        parsed = await segment_bodies.parse_predict(parsers, body, SPECS, None)
    _assert_parsed_as_in_place(parsed, body)
    [warning] = caplog.records
    assert warning.getMessage().startswith(
        "A large request body's arrays came back from their worker through a "
        "pipe of their own"
    )
    assert await _settled() == []


async def test_a_body_read_without_room_arrives_whole_through_its_pipe(
    parsers_without_room: BodyParsers,
) -> None:
    examples = orjson.dumps({"examples": [{"x": [float(i)]} for i in range(3000)]})
    assert await segment_bodies.run_on_body(
        parsers_without_room, json_codec.parse_examples_request, examples
    ) == json_codec.parse_examples_request(examples)
    with pytest.raises(InvalidArgument, match="refused 70000 bytes"):
        await segment_bodies.run_on_body(
            parsers_without_room, _refuse_body, b"x" * 70_000
        )
