"""Large buffers are given back in a thread, and only when nothing else holds
them."""

from __future__ import annotations

import sys
import time
import weakref

import pytest
from servekit_protocol.buffers import (
    JOIN_IN_THREAD_BYTES,
    RELEASE_IN_THREAD_BYTES,
    join_chunks,
    release_later,
)

LARGE = RELEASE_IN_THREAD_BYTES + 12345
linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="madvise is used on Linux only"
)


class Tracked(bytearray):
    """A bytearray a weak reference can follow."""


@linux_only
async def test_a_large_buffer_is_given_back_in_a_thread() -> None:
    buffer = Tracked(b"\x01" * LARGE)
    gone = weakref.ref(buffer)
    holder: list[bytearray] = [buffer]
    del buffer
    work = release_later(holder)
    assert work is not None
    await work
    assert holder == []
    assert gone() is None


@linux_only
async def test_a_buffer_still_viewed_keeps_its_bytes() -> None:
    buffer = bytearray(b"\x07" * LARGE)
    view = memoryview(buffer)[100:]
    holder: list[bytearray] = [buffer]
    del buffer
    work = release_later(holder)
    assert work is not None
    await work
    assert view[0] == 7
    assert view[-1] == 7
    assert bytes(view[LARGE // 2 : LARGE // 2 + 4096]) == b"\x07" * 4096


@linux_only
async def test_bytes_still_referred_to_keep_their_bytes() -> None:
    data = b"\x05" * LARGE
    kept = data
    holder: list[bytes] = [data]
    del data
    work = release_later(holder)
    assert work is not None
    await work
    assert kept.count(b"\x05") == LARGE


async def test_a_small_buffer_is_dropped_in_place() -> None:
    holder: list[bytearray] = [bytearray(16)]
    assert release_later(holder) is None
    assert holder == []


@pytest.mark.parametrize(
    "sizes",
    [[5], [3, 4], [JOIN_IN_THREAD_BYTES // 2, JOIN_IN_THREAD_BYTES // 2 + 7]],
    ids=["one chunk", "small", "large"],
)
async def test_chunks_are_joined_in_order(sizes: list[int]) -> None:
    chunks = [bytes([index + 1]) * size for index, size in enumerate(sizes)]
    joined = await join_chunks(chunks, sum(sizes))
    assert joined == b"".join(chunks)


async def test_a_large_body_is_joined_off_the_loops_thread() -> None:
    chunks = [b"\x01" * (1 << 20)] * 64
    # The copy's CPU time is the thread's: the loop's spends next to none of
    # the 64 MiB copy (some 50 ms when joined here).
    started = time.thread_time()
    joined = await join_chunks(chunks, 64 << 20)
    assert time.thread_time() - started < 0.01
    assert len(joined) == 64 << 20
