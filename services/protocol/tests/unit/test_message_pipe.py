"""A large message's own pipe to its worker, and its arrays' pipe back
(:mod:`servekit_protocol.messagepipe`): the bytes and arrays arrive
whole, and each side stops when the other goes away or never comes.

The reader here is this process (a worker unpickles the same handle and reads
the same way: see the model server's ``test_large_requests``)."""

from __future__ import annotations

import os
import pickle
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from servekit_protocol.descriptors import Descriptors
from servekit_protocol.messagepipe import (
    ArraysPipe,
    MessagePipe,
    PipedArrays,
    PipedMessage,
    ReturnedArrays,
    send_back,
    send_back_bytes,
)
from servekit_protocol.pickledmessage import MessageBytes, ReceivedBytes

CLOSE_SECONDS = 5.0
"""Most time ``close`` may take once nothing reads: the writer checks every
0.1 s; the margin is for a loaded 2-core runner."""


@pytest.fixture
def descriptors() -> Iterator[Descriptors]:
    table = Descriptors()
    yield table
    table.close()


def _data() -> bytes:
    return bytes(range(256)) * 40_000  # about 10 MiB, 160 times the pipe's room


def test_the_bytes_arrive_whole_through_a_pickled_handle(
    descriptors: Descriptors,
) -> None:
    data = _data()
    pipe = MessagePipe(memoryview(data), descriptors)
    try:
        handed = pickle.loads(pickle.dumps(pipe.message))
        assert isinstance(handed, PipedMessage)
        assert handed.size == len(data)
        assert handed.received() == data
    finally:
        pipe.close()


def test_the_writer_stops_when_its_reader_goes_away(descriptors: Descriptors) -> None:
    pipe = MessagePipe(memoryview(_data()), descriptors)
    descriptor = pipe.message.reader.detach()
    assert len(os.read(descriptor, 1024)) == 1024
    os.close(descriptor)
    started = time.monotonic()
    pipe.close()
    assert time.monotonic() - started < CLOSE_SECONDS


def test_the_writer_stops_when_no_reader_comes(descriptors: Descriptors) -> None:
    pipe = MessagePipe(memoryview(_data()), descriptors)
    started = time.monotonic()
    pipe.close()
    assert time.monotonic() - started < CLOSE_SECONDS


ARRAYS = {
    "large": np.arange(3 * 1024 * 1024, dtype=np.float64).reshape(-1, 4),
    "big-endian": np.arange(12, dtype=">i4").reshape(3, 4),
    "complex": np.array([1 + 2j, 3j], dtype=np.complex64),
    "bool": np.array([True, False]),
    "0-d": np.array(7, dtype=np.int16),
    "empty": np.zeros((0, 5), dtype=np.float32),
}


def test_arrays_arrive_whole_through_a_pickled_handle(descriptors: Descriptors) -> None:
    pipe = ArraysPipe(descriptors)
    handed = pickle.loads(pickle.dumps(pipe.arrays))
    assert isinstance(handed, PipedArrays)
    handed.send(ARRAYS)
    received = pipe.received()
    assert list(received) == list(ARRAYS)
    for name, array in ARRAYS.items():
        got: np.ndarray[Any, Any] = received[name]
        assert (got.dtype, got.shape) == (array.dtype, array.shape), name
        assert got.tobytes() == array.tobytes(), name


def test_no_arrays_come_when_the_worker_sends_none(descriptors: Descriptors) -> None:
    pipe = ArraysPipe(descriptors)
    started = time.monotonic()
    assert pipe.received() == {}
    assert time.monotonic() - started < CLOSE_SECONDS


def test_arrays_cut_short_are_an_error(descriptors: Descriptors) -> None:
    pipe = ArraysPipe(descriptors)
    descriptor = pipe.arrays.writer.detach()
    os.write(descriptor, (100).to_bytes(8, "big") + b"partial")
    os.close(descriptor)
    with pytest.raises(OSError, match="ended early"):
        pipe.received()


def test_message_bytes_pickle_to_the_same_bytes_in_pieces() -> None:
    data = bytes(range(256)) * 40_000  # about 10 MiB: three pieces
    received = pickle.loads(pickle.dumps(MessageBytes(memoryview(data))))
    assert isinstance(received, ReceivedBytes)
    assert len(received) == 3
    assert received.joined() == data


def _same(received: dict[str, Any]) -> None:
    assert list(received) == list(ARRAYS)
    for name, array in ARRAYS.items():
        got: np.ndarray[Any, Any] = received[name]
        assert (got.dtype, got.shape) == (array.dtype, array.shape), name
        assert got.tobytes() == array.tobytes(), name


def _writers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "sending-back"]


def test_arrays_sent_back_arrive_whole_through_a_pickled_handle() -> None:
    handed = pickle.loads(pickle.dumps(send_back(ARRAYS)))
    assert isinstance(handed, ReturnedArrays)
    _same(handed.received())
    deadline = time.monotonic() + CLOSE_SECONDS
    while _writers() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _writers() == []


def test_the_sending_back_thread_stops_when_its_reader_goes_away() -> None:
    returned = send_back(ARRAYS)
    descriptor = returned.reader.detach()
    assert len(os.read(descriptor, 1024)) > 0
    os.close(descriptor)
    deadline = time.monotonic() + CLOSE_SECONDS
    while _writers() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _writers() == []


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_pipe_end_nobody_took_is_closed_with_its_call(
    descriptors: Descriptors,
) -> None:
    # Both ends once, so the table's socket and thread are there before the
    # count (they live as long as the process).
    MessagePipe(memoryview(b"x"), descriptors).close()
    ArraysPipe(descriptors).received()
    before = _open_descriptors()
    for _ in range(20):
        # A worker that died before reading, and one that refused its
        # request: neither takes its pipe's end.
        MessagePipe(memoryview(_data()), descriptors).close()
        assert ArraysPipe(descriptors).received() == {}
    assert _open_descriptors() == before
    assert descriptors.waiting() == 0


def test_a_dropped_pipe_end_cannot_be_taken(descriptors: Descriptors) -> None:
    pipe = ArraysPipe(descriptors)
    handed = pickle.loads(pickle.dumps(pipe.arrays))
    assert pipe.received() == {}
    with pytest.raises(OSError, match="dropped"):
        handed.send(ARRAYS)


def test_a_pipe_end_is_taken_once(descriptors: Descriptors) -> None:
    pipe = MessagePipe(memoryview(_data()), descriptors)
    try:
        handed = pickle.loads(pickle.dumps(pipe.message))
        assert handed.received() == _data()
        with pytest.raises(OSError, match="dropped"):
            handed.received()
    finally:
        pipe.close()


STALLED_SECONDS = 0.5
"""How long the writer of a pipe sent back waits for its reader in the tests
below (the services wait 120 s)."""


def _writers_gone() -> None:
    deadline = time.monotonic() + STALLED_SECONDS + CLOSE_SECONDS
    while _writers() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _writers() == []


def test_a_pipe_sent_back_that_nobody_reads_leaves_no_descriptor() -> None:
    # A worker whose call failed on the server's side: nobody takes the
    # pipe's read end, which its table closes when the writer gives up.
    before = _open_descriptors()
    returned = send_back(ARRAYS, stalled_seconds=STALLED_SECONDS)
    assert _open_descriptors() > before
    _writers_gone()
    assert _open_descriptors() == before
    with pytest.raises(OSError):
        returned.received()


def test_a_small_answer_sent_back_waits_for_its_reader() -> None:
    returned = send_back_bytes(b"small", stalled_seconds=CLOSE_SECONDS)
    # Its writer is done at once (the pipe has room for it all): the read end
    # must stay in its table until the server takes it.
    time.sleep(STALLED_SECONDS)
    assert pickle.loads(pickle.dumps(returned)).received() == b"small"
    _writers_gone()
