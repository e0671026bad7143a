"""Answers written in a worker with their arrays and bytes moved through shared
memory segments (servekit_protocol.segment_answers), real worker processes."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import pickle
import time
from collections.abc import Iterator
from typing import Any, NoReturn

import numpy as np
import orjson
import pytest
from servekit_protocol import segment_answers, segments
from servekit_protocol.errors import InvalidArgument
from servekit_protocol.json_codec.offload import BodyParsers
from servekit_protocol.messagepipe import ReturnedBytes

Array = np.ndarray[Any, Any]


def _own_segments(pid: int) -> list[str]:
    return sorted(
        name
        for name in os.listdir(segments.default_directory())
        if name.startswith(f"servekit-{pid}-")
    )


def _describe(arrays: dict[str, Array], parent: int, note: str) -> bytes:
    """What the worker got, and the parent's segments it saw meanwhile."""
    return orjson.dumps(
        {
            "pid": os.getpid(),
            "note": note,
            "order": list(arrays),
            "arrays": {
                key: [
                    str(value.dtype),
                    list(value.shape),
                    [repr(item) for item in value.ravel().tolist()],
                ]
                for key, value in arrays.items()
            },
            "segments": [name.rsplit("-", 1)[1] for name in _own_segments(parent)],
        },
        option=orjson.OPT_NON_STR_KEYS,
    )


def _slow(arrays: dict[str, Array], seconds: float) -> bytes:
    del arrays
    time.sleep(seconds)
    return b"late"


def _refuse(arrays: dict[str, Array]) -> bytes:
    del arrays
    raise InvalidArgument("no such answer")


@pytest.fixture(scope="module")
def parsers() -> Iterator[BodyParsers]:
    running = BodyParsers(workers=1, answer_threshold_elements=1)
    try:
        yield running
    finally:
        running.close()


async def _settled(pid: int, timeout: float = 10.0) -> list[str]:
    # Unlinking runs in a thread that is not awaited.
    deadline = time.monotonic() + timeout
    while _own_segments(pid) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return _own_segments(pid)


async def test_arrays_arrive_in_order_and_the_answer_comes_back_whole(
    parsers: BodyParsers,
) -> None:
    arrays: dict[str, Array] = {
        "z": np.arange(12.0).reshape(3, 4).T,  # not C order
        "labels": np.array([b"a", b"\xff"], dtype=object),
        "a": np.array([True, False]),
        "text": np.array(["é", "x"]),
        "empty": np.zeros((0, 3), np.int32),
    }
    answer = await segment_answers.write_in_worker(
        parsers, _describe, arrays, os.getpid(), "n"
    )
    seen = orjson.loads(answer)
    assert seen["pid"] != os.getpid()
    assert seen["note"] == "n"
    assert seen["order"] == list(arrays)
    for key, value in arrays.items():
        assert seen["arrays"][key] == [
            str(value.dtype),
            list(value.shape),
            [repr(item) for item in value.ravel().tolist()],
        ]
    # The numeric arrays were in a segment while the worker ran.
    assert seen["segments"] == ["outputs"]
    assert await _settled(os.getpid()) == []


async def test_a_large_answer_is_byte_identical(parsers: BodyParsers) -> None:
    values = np.random.default_rng(3).normal(size=(1 << 20,))
    arrays = {"v": values}
    in_place = _describe(arrays, os.getpid(), "")
    answer = await segment_answers.write_in_worker(
        parsers, _describe, arrays, os.getpid(), ""
    )
    # Only the worker's pid and the segments it saw differ.
    expected = orjson.loads(in_place)
    got = orjson.loads(answer)
    assert got["arrays"] == expected["arrays"]
    assert len(answer) > 8 * len(values)


async def test_the_worker_s_error_comes_back_and_nothing_is_left(
    parsers: BodyParsers,
) -> None:
    with pytest.raises(InvalidArgument, match="no such answer"):
        await segment_answers.write_in_worker(parsers, _refuse, {"x": np.zeros(1000)})
    assert await _settled(os.getpid()) == []


async def test_a_cancelled_call_removes_its_segments_once_the_worker_is_done(
    parsers: BodyParsers,
) -> None:
    call = asyncio.ensure_future(
        segment_answers.write_in_worker(parsers, _slow, {"x": np.zeros(1000)}, 0.5)
    )
    await asyncio.sleep(0.1)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    # The worker still runs: its arrays stay until it has answered.
    assert await _settled(os.getpid(), timeout=30) == []
    # The worker is free again.
    assert await segment_answers.write_in_worker(parsers, _slow, {}, 0.0) == b"late"


def test_an_answer_whose_segment_cannot_be_written_comes_back_through_a_pipe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    taken = segments.new_path(segments.default_directory(), "answer")
    segments.write_bytes(taken, b"someone else's")
    try:
        sent = segment_answers._Arrays("unused", [], {}, ())
        answer = segment_answers.write_answer(taken, sent, _slow, 0.0)
        assert isinstance(answer, ReturnedBytes)
        assert pickle.loads(pickle.dumps(answer)).received() == b"late"

        # Where no pipe can be made either, the answer itself.
        def no_pipe(data: bytes) -> NoReturn:
            raise OSError(errno.EMFILE, "Too many open files")

        monkeypatch.setattr(segment_answers, "send_back_bytes", no_pipe)
        segments.write_bytes(taken, b"someone else's")
        assert segment_answers.write_answer(taken, sent, _slow, 0.0) == b"late"
    finally:
        segments.unlink(taken)


@pytest.fixture(scope="module")
def parsers_without_room(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[BodyParsers]:
    # A folder that does not exist: every segment's open fails, the branch a
    # full /dev/shm (ENOSPC) takes.
    missing = tmp_path_factory.mktemp("no-room") / "missing"
    running = BodyParsers(
        workers=1, answer_threshold_elements=1, segment_dir=str(missing)
    )
    try:
        yield running
    finally:
        running.close()


async def test_without_room_arrays_and_answer_go_through_pipes_of_their_own(
    parsers_without_room: BodyParsers, caplog: pytest.LogCaptureFixture
) -> None:
    arrays: dict[str, Array] = {
        "z": np.random.default_rng(4).normal(size=(1 << 18, 4)).T,  # not C order
        "labels": np.array([b"a", b"\xff"], dtype=object),
        "a": np.array([True, False]),
        "empty": np.zeros((0, 3), np.int32),
    }
    with caplog.at_level(logging.WARNING):
        answer = await segment_answers.write_in_worker(
            parsers_without_room, _describe, arrays, os.getpid(), "n"
        )
    expected = orjson.loads(_describe(arrays, os.getpid(), "n"))
    seen = orjson.loads(answer)
    assert (seen["order"], seen["arrays"]) == (expected["order"], expected["arrays"])
    assert [record.getMessage().split(":")[0] for record in caplog.records] == [
        "A large answer's arrays went to its worker through a pipe of their own",
        "A large answer came back from its worker through a pipe of its own",
    ]
    with pytest.raises(InvalidArgument, match="no such answer"):
        await segment_answers.write_in_worker(
            parsers_without_room, _refuse, {"x": np.zeros(100_000)}
        )


def test_read_answer_reads_the_segment_s_bytes() -> None:
    name = segments.new_path(segments.default_directory(), "answer")
    data = os.urandom(3 * 1024 * 1024 + 7)
    segments.write_bytes(name, data)
    try:
        assert segment_answers.read_answer(name, len(data)) == data
        with pytest.raises(OSError, match="ended early"):
            segment_answers.read_answer(name, len(data) + 1)
    finally:
        segments.unlink(name)
