"""A compressed gRPC request message inflated in steps.

Inflated in one ``decompress`` call, a 64 MiB message is put together at the
end with the GIL held: zlib's output blocks are copied into one fresh bytes
object, faulting its pages in, and the event loop waits 50-100 ms for that
even when the inflating runs in a thread. Here each step gives at most
:data:`STEP` bytes and the pieces are joined by ``bytes.join``, which lets go
of the GIL while copying large joins.

A message's compressed size says nothing of its inflated size (64 MiB of zeros
gzip to 64 KiB), so a caller on the event loop runs at most a step or two
(:func:`advance`) and leaves the rest to a thread (:func:`finish`).
"""

from __future__ import annotations

import zlib
from collections.abc import Generator

import grpc

from servekit_protocol.grpcweb_server import Aborted

STEP = 1024 * 1024
"""Inflated bytes one step gives at most."""
_INPUT_STEP = 256 * 1024
"""Compressed bytes handed to one step: a step that fills its output keeps the
input it did not read as a copy (``unconsumed_tail``), so this bounds that
copy; handed the whole message, each step would copy what is left of it."""


Steps = Generator[None, None, bytes]
"""An inflating in progress: each ``next`` runs one step; the message is the
value it stops with."""


def inflate(data: memoryview, encoding: str, limit: int, step: int = STEP) -> bytes:
    """The message ``data`` inflated whole (see :func:`inflating`)."""
    return finish(inflating(data, encoding, limit, step))


def advance(steps: Steps, count: int) -> bytes | None:
    """Run at most ``count`` more steps: the message if it is done by then."""
    for _ in range(count):
        try:
            next(steps)
        except StopIteration as done:
            message: bytes = done.value
            return message
    return None


def finish(steps: Steps) -> bytes:
    """Run the steps left: the message."""
    while True:
        message = advance(steps, 64)
        if message is not None:
            return message


def inflating(data: memoryview, encoding: str, limit: int, step: int = STEP) -> Steps:
    """The message ``data`` inflated, of at most ``limit`` bytes, a step at a
    time.

    It answers as one ``decompress(data, limit + 1)`` call does: what follows
    the end of the stream is ignored and a stream cut short gives what it
    holds.

    Raises:
        Aborted: UNIMPLEMENTED for an unknown ``encoding``, INTERNAL for a bad
            stream, RESOURCE_EXHAUSTED above ``limit``.
    """
    if encoding == "gzip":
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif encoding == "deflate":
        inflater = zlib.decompressobj()
    else:
        raise Aborted(
            grpc.StatusCode.UNIMPLEMENTED,
            f"Compression algorithm '{encoding or 'identity'}' is not supported",
        )
    pieces: list[bytes] = []
    size = 0
    try:
        for start in range(0, len(data), _INPUT_STEP):
            pending: bytes | memoryview = data[start : start + _INPUT_STEP]
            while True:
                wanted = min(step, limit + 1 - size)
                piece = inflater.decompress(pending, wanted)
                yield
                pieces.append(piece)
                size += len(piece)
                pending = inflater.unconsumed_tail
                # A step that filled its output may hold more of it back even
                # with its input all read: asked again, it gives that.
                if (
                    inflater.eof
                    or size > limit
                    or (not pending and len(piece) < wanted)
                ):
                    break
            if inflater.eof or size > limit:
                break
    except zlib.error as exc:
        raise Aborted(
            grpc.StatusCode.INTERNAL, f"Bad compressed message: {exc}"
        ) from exc
    if size > limit:
        raise Aborted(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"Received message larger than max (more than {limit} bytes inflated)",
        )
    return b"".join(pieces)
