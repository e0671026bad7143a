"""A compressed body or message inflated in steps, mostly off the event loop.

One implementation for every compressed input both services take: gRPC
messages (``grpc-encoding``) and HTTP bodies (``Content-Encoding``: REST,
gRPC-Web). Each caller turns the errors below into its own protocol's answer.

Inflated in one ``decompress`` call, a 64 MiB result is put together at the
end with the GIL held: zlib's output blocks are copied into one fresh bytes
object, faulting its pages in, and the event loop waits 50-100 ms for that
even when the inflating runs in a thread. Here each step gives at most
:data:`STEP` bytes and the pieces are joined by ``bytes.join``, which lets go
of the GIL while copying large joins.

A compressed size says nothing of the inflated size (64 MiB of zeros gzip to
64 KiB), so :func:`inflated` runs at most :data:`LOOP_STEPS` steps on the
event loop and leaves the rest to a thread.
"""

from __future__ import annotations

import asyncio
import enum
import zlib
from collections.abc import Generator

STEP = 1024 * 1024
"""Inflated bytes one step gives at most."""
_INPUT_STEP = 256 * 1024
"""Compressed bytes handed to one step: a step that fills its output keeps the
input it did not read as a copy (``unconsumed_tail``), so this bounds that
copy; handed the whole input, each step would copy what is left of it."""
THREAD_BYTES = 64 * 1024
"""Compressed inputs above this are inflated in a thread from the start."""
LOOP_STEPS = 2
"""Steps a smaller input may take on the event loop before the rest goes to a
thread: a small input usually inflates in one or two; a bomb (60 MiB of zeros
in 60 KiB) would hold the loop for 100-170 ms."""


class Coding(enum.Enum):
    """A compressed coding, with zlib's ``wbits`` for it."""

    GZIP = zlib.MAX_WBITS | 16
    # HTTP's "deflate" and gRPC's are the zlib format (RFC 9110 8.4.1.2).
    DEFLATE = zlib.MAX_WBITS


class TooLarge(Exception):
    """The input inflates to more than the limit."""


class CutShort(Exception):
    """The input ends before its stream does (only where the whole stream is
    required)."""


Steps = Generator[None, None, bytes]
"""An inflating in progress: each ``next`` runs one step; the inflated bytes
are the value it stops with."""


def inflating(
    data: bytes | memoryview,
    coding: Coding,
    limit: int,
    *,
    step: int = STEP,
    whole_stream: bool = False,
    judged_at: int | None = None,
) -> Steps:
    """``data`` inflated, of at most ``limit`` bytes, a step at a time.

    Bytes after the end of the stream are ignored. A stream cut short gives
    what it holds, as one ``decompress(data, limit + 1)`` call does, unless
    ``whole_stream`` asks for its end. The first ``judged_at`` inflated bytes
    (``limit + 1`` by default, more is allowed) are read before the size is
    judged, so an error within them is the stream's error.

    Raises:
        zlib.error: a bad stream (found within the first ``judged_at`` bytes).
        TooLarge: above ``limit``.
        CutShort: ``whole_stream`` and the stream does not end.
    """
    inflater = zlib.decompressobj(coding.value)
    pieces: list[bytes] = []
    size = 0
    end = limit + 1 if judged_at is None else max(judged_at, limit + 1)
    for start in range(0, len(data), _INPUT_STEP):
        pending: bytes | memoryview = data[start : start + _INPUT_STEP]
        while True:
            wanted = min(step, end - size)
            piece = inflater.decompress(pending, wanted)
            yield
            pieces.append(piece)
            size += len(piece)
            pending = inflater.unconsumed_tail
            # A step that filled its output may hold more of it back even
            # with its input all read: asked again, it gives that.
            if inflater.eof or size >= end or (not pending and len(piece) < wanted):
                break
        if inflater.eof or size >= end:
            break
    if size > limit:
        raise TooLarge
    if whole_stream and not inflater.eof:
        raise CutShort
    return b"".join(pieces)


def advance(steps: Steps, count: int) -> bytes | None:
    """Run at most ``count`` more steps: the inflated bytes if done by then."""
    for _ in range(count):
        try:
            next(steps)
        except StopIteration as done:
            inflated: bytes = done.value
            return inflated
    return None


def finish(steps: Steps) -> bytes:
    """Run the steps left: the inflated bytes."""
    while True:
        inflated = advance(steps, 64)
        if inflated is not None:
            return inflated


async def inflated(steps: Steps, compressed_bytes: int) -> bytes:
    """Run ``steps`` (of an input of ``compressed_bytes``) to their end: at most
    :data:`LOOP_STEPS` on the event loop when the input is small, the rest in
    a thread.

    Raises:
        What the steps raise.
    """
    if compressed_bytes <= THREAD_BYTES:
        done = advance(steps, LOOP_STEPS)
        if done is not None:
            return done
    return await asyncio.to_thread(finish, steps)
