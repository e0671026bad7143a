"""Bytes kept as the parts they were made in, taken a piece at a time.

An answer is a short prefix, a message of up to hundreds of MiB and, for
gRPC-Web, a trailer frame. Joined, the message would be copied whole on the
event loop (64 MiB: tens of ms) only to be cut up again, into HTTP/2 DATA
frames or base64 pieces. Here the pieces are taken from the parts as views;
only a piece that spans two parts (the prefix and the message's first bytes)
is joined, a piece's worth at most.
"""

from __future__ import annotations

from collections.abc import Iterable


def byte_views(parts: Iterable[bytes | bytearray | memoryview]) -> list[memoryview]:
    """``parts`` as byte views (none empty), for :func:`take`."""
    return [memoryview(part).cast("B") for part in parts if len(part)]


def take(pending: list[memoryview], size: int) -> bytes | memoryview:
    """The next ``size`` bytes of ``pending`` (fewer at its end), taken off it:
    a view where they lie in one part, joined where they span parts."""
    first = pending[0]
    if len(first) > size:
        pending[0] = first[size:]
        return first[:size]
    if len(first) == size or len(pending) == 1:
        del pending[0]
        return first
    pieces: list[memoryview] = []
    while pending and size > 0:
        part = pending[0]
        if len(part) > size:
            pieces.append(part[:size])
            pending[0] = part[size:]
            break
        pieces.append(part)
        del pending[0]
        size -= len(part)
    return b"".join(pieces)
