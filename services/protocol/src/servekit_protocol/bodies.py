"""REST request bodies sent with ``Content-Encoding: gzip``, as TF Serving accepts them.

The size limit applies to the inflated body: a few kilobytes of gzip can inflate to
gigabytes, so inflation stops one byte past the limit.
"""

from __future__ import annotations

import zlib
from http import HTTPStatus

from servekit_protocol.errors import InvalidArgument, ProtocolError


class BodyTooLarge(ProtocolError):
    """The (inflated) request body is above the server's limit."""

    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


def too_large_message(limit: int) -> str:
    """The error text for a body above `limit` bytes."""
    return f"Request body is larger than the limit of {limit} bytes"


def is_gzip(content_encoding: bytes) -> bool:
    """Whether a Content-Encoding header value names gzip."""
    return b"gzip" in content_encoding.lower()


def gunzip(body: bytes, limit: int) -> bytes:
    """Inflate a gzip body of at most `limit` bytes once inflated.

    Raises:
        InvalidArgument: not gzip, corrupt or truncated.
        BodyTooLarge: the inflated body is above `limit`.
    """
    inflater = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
    try:
        inflated = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidArgument(f"Failed to uncompress the gzipped body: {exc}") from exc
    if len(inflated) > limit:
        raise BodyTooLarge(too_large_message(limit))
    if not inflater.eof:
        raise InvalidArgument("Failed to uncompress the gzipped body: truncated data")
    return inflated
