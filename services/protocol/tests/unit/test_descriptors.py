"""The table handing a pipe's end to its worker
(:mod:`servekit_protocol.descriptors`): a connection that sends nothing, or
part of a token, holds up no other asker, and is dropped soon; a closed table
holds no descriptor."""

from __future__ import annotations

import os
import pickle
import socket
import time
from collections.abc import Iterator

import pytest
from servekit_protocol.descriptors import Descriptors
from servekit_protocol.messagepipe import MessagePipe, PipedMessage

TAKEN_SECONDS = 5.0
"""Most time a worker may wait for its pipe's end while other connections sit
silent: answered as soon as its token arrives (milliseconds), the margin is
for a loaded 2-core runner; a table serving one asker at a time made it wait
for the silent one's 30 s."""
DROPPED_SECONDS = 20.0
"""Most time a silent connection may stay open: the table drops it after 5 s
(``_TOKEN_SECONDS``); the margin is for a loaded runner, and the bound stays
under the 30 s a worker would wait for its answer."""
SILENT_ASKERS = 300
"""More connections than the table keeps waiting for their tokens (256)."""


@pytest.fixture
def descriptors() -> Iterator[Descriptors]:
    table = Descriptors()
    yield table
    table.close()


def _data() -> bytes:
    return bytes(range(256)) * 4_000  # about 1 MiB, 16 times the pipe's room


def _connected(address: str) -> socket.socket:
    # A full backlog (64) refuses a connection at once (EAGAIN): try again
    # until the bound, so that a table that accepts slowly fails the test
    # rather than hangs it.
    deadline = time.monotonic() + TAKEN_SECONDS
    while True:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.setblocking(False)
        try:
            conn.connect(address)
        except BlockingIOError:
            conn.close()
            assert time.monotonic() < deadline, "the table accepts no connection"
            time.sleep(0.01)
            continue
        except BaseException:
            conn.close()
            raise
        return conn


def _taken_promptly(handed: PipedMessage) -> None:
    started = time.monotonic()
    assert handed.received() == _data()
    assert time.monotonic() - started < TAKEN_SECONDS


def test_a_silent_asker_holds_up_no_other(descriptors: Descriptors) -> None:
    pipe = MessagePipe(memoryview(_data()), descriptors)
    try:
        handed = pickle.loads(pickle.dumps(pipe.message))
        address, token = handed.reader.address, handed.reader.token
        with _connected(address) as silent, _connected(address) as partial:
            # Half of the right token: the table must not wait for the rest.
            partial.sendall(token[: len(token) // 2])
            _taken_promptly(handed)
            silent.settimeout(DROPPED_SECONDS)
            partial.settimeout(DROPPED_SECONDS)
            assert silent.recv(1) == b""
            assert partial.recv(1) == b""
    finally:
        pipe.close()


def test_many_silent_askers_hold_up_no_other(descriptors: Descriptors) -> None:
    pipe = MessagePipe(memoryview(_data()), descriptors)
    silent: list[socket.socket] = []
    try:
        handed = pickle.loads(pickle.dumps(pipe.message))
        for _ in range(SILENT_ASKERS):
            silent.append(_connected(handed.reader.address))
        _taken_promptly(handed)
    finally:
        for conn in silent:
            conn.close()
        pipe.close()


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_closed_table_holds_no_descriptor() -> None:
    before = _open_descriptors()
    table = Descriptors()
    taken = MessagePipe(memoryview(_data()), table)
    untaken = MessagePipe(memoryview(_data()), table)
    handed = pickle.loads(pickle.dumps(untaken.message))
    assert pickle.loads(pickle.dumps(taken.message)).received() == _data()
    taken.close()
    # Its socket, its thread's wake-up pair, the duplicate nobody took.
    assert _open_descriptors() > before
    table.close()
    untaken.close()
    assert table.waiting() == 0
    assert _open_descriptors() == before
    with pytest.raises(OSError):
        handed.received()
    # A closed table starts again with the next call's pipe.
    again = MessagePipe(memoryview(_data()), table)
    try:
        assert pickle.loads(pickle.dumps(again.message)).received() == _data()
    finally:
        again.close()
        table.close()
