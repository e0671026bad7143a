"""Protobuf's wire format walked by hand, for the few messages the gateway
reads without parsing them whole (a parse copies or decodes every value, and
holds the event loop about 1 ms a MiB).

The walkers built on these (:mod:`gateway.clients.forwarded`,
:mod:`gateway.clients.answers`, :mod:`gateway.codecs.v2_spliced`) read only
tags, lengths and the few small fields they need; every value they do not
need is skipped by its length. Anything the walk does not expect (a group, a
field number 0, a field running past its message) raises ``IndexError``, and
the walker's caller then parses the message whole, so it fails or succeeds as
it did when every message was parsed.
"""

from __future__ import annotations

from collections.abc import Iterator

VARINT = 0
FIXED64 = 1
LENGTH_DELIMITED = 2
FIXED32 = 5

Buffer = bytes | memoryview


def varint(message: Buffer, position: int) -> tuple[int, int]:
    """A base-128 varint at ``position``: (its value, the position after it).

    Raises:
        IndexError: the data ends inside it, or it is over 10 bytes.
    """
    value = 0
    for shift in range(0, 70, 7):
        byte = message[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
    raise IndexError("varint over 10 bytes")


def tag(message: Buffer, position: int) -> tuple[int, int, int]:
    """(field number, wire type, position after the tag).

    Raises:
        IndexError: field number 0, or the data ends inside the tag.
    """
    key, position = varint(message, position)
    if key >> 3 == 0:
        raise IndexError("field number 0")
    return key >> 3, key & 7, position


def length_delimited(message: Buffer, position: int, end: int) -> tuple[int, int]:
    """(where a length-delimited value starts, where it ends).

    Raises:
        IndexError: it runs past ``end``.
    """
    length, position = varint(message, position)
    if position + length > end:
        raise IndexError("a field runs past its message")
    return position, position + length


def skipped(message: Buffer, position: int, wire: int) -> int:
    """The position after a value of wire type ``wire`` (not length-delimited).

    Raises:
        IndexError: a group or an invalid wire type (left to upb).
    """
    if wire == VARINT:
        return varint(message, position)[1]
    if wire == FIXED64:
        return position + 8
    if wire == FIXED32:
        return position + 4
    raise IndexError(f"wire type {wire}")


def fields(
    message: Buffer, start: int, end: int
) -> Iterator[tuple[int, int, int, int, int]]:
    """Each field of ``message[start:end]``: (field number, wire type, where
    its tag starts, where its value starts, where its value ends).

    Raises:
        IndexError: the fields do not end exactly at ``end``, or one is not
            plain wire format (see :func:`tag` and :func:`skipped`).
    """
    position = start
    while position < end:
        number, wire, value = tag(message, position)
        if wire == LENGTH_DELIMITED:
            value, after = length_delimited(message, value, end)
        else:
            after = skipped(message, value, wire)
        yield number, wire, position, value, after
        position = after
    if position != end:
        raise IndexError("a field runs past its message")


__all__ = [
    "FIXED32",
    "FIXED64",
    "LENGTH_DELIMITED",
    "VARINT",
    "fields",
    "length_delimited",
    "skipped",
    "tag",
    "varint",
]
