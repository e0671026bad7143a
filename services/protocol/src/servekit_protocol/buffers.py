"""Large received buffers joined, and given back to the system, off the event loop.

Joining the chunks of a large body is a copy into fresh pages: 62 ms of the
loop's CPU for 75 MiB (most of it the page faults). :func:`join_chunks` makes
that copy in a thread (``bytes.join`` releases the GIL for copies of 1 MiB and
more), so the loop serves others meanwhile.

Freeing a buffer of hundreds of MiB unmaps its pages in the call, with the GIL
held: 22 ms for a 128 MiB ``bytearray``, 33 ms for 256 MiB on the shared
machine, so dropping the last reference in a thread holds the event loop just
as long. :func:`release_later` hands the buffer to a thread that first tells
the kernel its pages are no longer needed (``madvise(MADV_DONTNEED)`` through
:mod:`ctypes`, which releases the GIL for the call), so that the free that
follows, wherever it happens, finds nothing left to unmap.

A buffer something else still refers to (a view a decoder kept, say) keeps its
pages: the thread only advises when it holds the last reference.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import mmap
import sys

logger = logging.getLogger(__name__)

RELEASE_IN_THREAD_BYTES = 8 * 1024 * 1024
"""Buffers from this size are given back in a thread (about 1 ms of unmapping
on the loop below it)."""

_MADV_DONTNEED = 4
_PAGE = mmap.PAGESIZE
_LIBC: ctypes.CDLL | None = None
if sys.platform.startswith("linux"):
    try:
        _LIBC = ctypes.CDLL(None, use_errno=True)
        _LIBC.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        _LIBC.madvise.restype = ctypes.c_int
    except (OSError, AttributeError):
        _LIBC = None


JOIN_IN_THREAD_BYTES = 4 * 1024 * 1024
"""Bodies from this size are joined in a thread (well under 1 ms of copying on
the loop below it)."""


async def join_chunks(chunks: list[bytes], size: int) -> bytes:
    """``b"".join(chunks)`` (``size`` bytes in all), in a thread of the running
    loop's default executor from :data:`JOIN_IN_THREAD_BYTES` up."""
    if len(chunks) == 1:
        return chunks[0]
    if size < JOIN_IN_THREAD_BYTES:
        return b"".join(chunks)
    return await asyncio.get_running_loop().run_in_executor(None, b"".join, chunks)


def release_later(
    holder: list[bytes] | list[bytearray],
) -> asyncio.Future[None] | None:
    """Empty ``holder`` (a list holding one buffer), giving a large buffer's
    pages back in a thread of the running loop's default executor. The caller
    keeps no other reference to the buffer: ``holder`` is how it hands over
    the last one.

    Returns:
        The thread's work, done once the buffer is given back (nobody needs to
        wait for it); None when it was dropped here.
    """
    if not holder:
        return None
    if _LIBC is None or len(holder[0]) < RELEASE_IN_THREAD_BYTES:
        holder.clear()
        return None
    return asyncio.get_running_loop().run_in_executor(None, _give_back, holder)


def _give_back(holder: list[bytes] | list[bytearray]) -> None:
    buffer = holder.pop()
    # Ours alone: this name and getrefcount's argument. Anything more is a
    # reference or a view elsewhere, whose bytes must stay as they are.
    if sys.getrefcount(buffer) == 2:
        _advise(buffer)
    del buffer


def _advise(buffer: bytes | bytearray) -> None:
    assert _LIBC is not None
    if isinstance(buffer, bytearray):
        view = (ctypes.c_char * len(buffer)).from_buffer(buffer)
        address = ctypes.addressof(view)
        del view
    else:
        # ctypes points at a bytes object's own storage, without a copy.
        address = ctypes.cast(ctypes.c_char_p(buffer), ctypes.c_void_p).value or 0
    start = -(-address // _PAGE) * _PAGE
    end = (address + len(buffer)) // _PAGE * _PAGE
    if end > start and _LIBC.madvise(start, end - start, _MADV_DONTNEED) != 0:
        logger.debug("madvise failed: errno %d", ctypes.get_errno())
