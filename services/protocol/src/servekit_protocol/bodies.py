"""REST request bodies sent with ``Content-Encoding: gzip`` (as TF Serving accepts
them) or ``deflate``, inflated under a size limit.

The size limit applies to the inflated body: a few kilobytes of gzip can inflate to
gigabytes, so inflation stops one step past the limit. :func:`inflate` works in
steps of :data:`INFLATE_STEP` output bytes and yields to the event loop between
them, so a large body never holds the loop for more than one step (about a
millisecond) while other requests wait.
"""

from __future__ import annotations

import asyncio
import enum
import zlib
from collections.abc import Iterator
from http import HTTPStatus

from servekit_protocol.errors import InvalidArgument, ProtocolError

INFLATE_STEP = 1 << 20
"""Inflated bytes produced between two yields to the event loop."""


class BodyTooLarge(ProtocolError):
    """The (inflated) request body is above the server's limit."""

    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class Coding(enum.Enum):
    """A compressed content coding, with zlib's ``wbits`` for it."""

    GZIP = zlib.MAX_WBITS | 16
    # HTTP's "deflate" is the zlib format (RFC 9110 8.4.1.2).
    DEFLATE = zlib.MAX_WBITS


_ADJECTIVE = {Coding.GZIP: "gzipped", Coding.DEFLATE: "deflated"}


def too_large_message(limit: int) -> str:
    """The error text for a body above `limit` bytes."""
    return f"Request body is larger than the limit of {limit} bytes"


def coding_of(content_encoding: bytes) -> Coding | None:
    """The compressed coding a Content-Encoding header value names, if any."""
    value = content_encoding.lower()
    if b"gzip" in value:
        return Coding.GZIP
    if b"deflate" in value:
        return Coding.DEFLATE
    return None


def is_gzip(content_encoding: bytes) -> bool:
    """Whether a Content-Encoding header value names gzip."""
    return coding_of(content_encoding) is Coding.GZIP


def _steps(body: bytes, coding: Coding, limit: int, into: bytearray) -> Iterator[None]:
    # Inflates into `into` one step at a time; the caller decides what to do
    # between steps (nothing, or let the event loop run).
    inflater = zlib.decompressobj(wbits=coding.value)
    pending = body
    try:
        while True:
            into += inflater.decompress(pending, INFLATE_STEP)
            if len(into) > limit:
                raise BodyTooLarge(too_large_message(limit))
            pending = inflater.unconsumed_tail
            if inflater.eof or not pending:
                break
            yield
    except zlib.error as exc:
        raise InvalidArgument(
            f"Failed to uncompress the {_ADJECTIVE[coding]} body: {exc}"
        ) from exc
    if not inflater.eof:
        raise InvalidArgument(
            f"Failed to uncompress the {_ADJECTIVE[coding]} body: truncated data"
        )


def gunzip(body: bytes, limit: int) -> bytes:
    """Inflate a gzip body of at most `limit` bytes once inflated, in one go.

    Raises:
        InvalidArgument: not gzip, corrupt or truncated.
        BodyTooLarge: the inflated body is above `limit`.
    """
    inflated = bytearray()
    for _ in _steps(body, Coding.GZIP, limit, inflated):
        pass
    return bytes(inflated)


async def inflate(body: bytes, coding: Coding, limit: int) -> bytes:
    """Inflate a body of at most `limit` bytes once inflated, letting the event
    loop run after every :data:`INFLATE_STEP` bytes.

    Raises:
        InvalidArgument: not of that coding, corrupt or truncated.
        BodyTooLarge: the inflated body is above `limit`.
    """
    inflated = bytearray()
    for _ in _steps(body, coding, limit, inflated):
        await asyncio.sleep(0)
    return bytes(inflated)
