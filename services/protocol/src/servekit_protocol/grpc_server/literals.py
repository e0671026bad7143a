"""HPACK literals for hand-built header blocks (raw clients and probes).

The server encodes with ``h2``; these build a request's header block byte by
byte where a client wants exact control of it.
"""

from __future__ import annotations


def hpack_integer(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """An HPACK integer (RFC 7541 §5.1) with ``prefix_bits`` in the first byte."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    encoded = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        encoded.append(value % 128 + 128)
        value //= 128
    encoded.append(value)
    return bytes(encoded)


def hpack_literal(name: bytes, value: bytes) -> bytes:
    """A header as a literal never added to the peer's table (RFC 7541 §6.2.2)."""
    return (
        b"\x00"
        + hpack_integer(len(name), 7)
        + name
        + hpack_integer(len(value), 7)
        + value
    )
