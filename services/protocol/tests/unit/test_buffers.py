"""Large buffers are given back in a thread, and only when nothing else holds
them."""

from __future__ import annotations

import sys
import weakref

import pytest
from servekit_protocol.buffers import RELEASE_IN_THREAD_BYTES, release_later

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
