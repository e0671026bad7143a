"""REST request bodies sent with ``Content-Encoding: gzip`` (as TF Serving accepts
them) or ``deflate``, inflated under a size limit.

The size limit applies to the inflated body: a few kilobytes of gzip can inflate to
gigabytes, so inflation stops one byte past the limit. :func:`inflate` works in
steps of :data:`~servekit_protocol.inflating.STEP` output bytes, at most a couple
of them on the event loop and the rest in a thread
(:func:`servekit_protocol.inflating.inflated`), as a compressed gRPC message is:
60 KiB of gzip inflating to 60 MiB of zeros cost the loop 0.1-0.2 s of CPU when
all its steps ran there.
"""

from __future__ import annotations

import zlib
from http import HTTPStatus

from servekit_protocol import inflating
from servekit_protocol.errors import InvalidArgument, ProtocolError
from servekit_protocol.inflating import Coding

__all__ = ["BodyTooLarge", "Coding", "coding_of", "gunzip", "inflate", "is_gzip"]


class BodyTooLarge(ProtocolError):
    """The (inflated) request body is above the server's limit."""

    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


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


def _body_steps(body: bytes, coding: Coding, limit: int) -> inflating.Steps:
    """The body inflated a step at a time; unlike a gRPC message, a body must
    hold its stream's end. A body over the limit is judged, as it always was,
    after the whole 1 MiB step that passes it: one corrupt within that step is
    refused as corrupt (400), not as too large.

    Raises:
        InvalidArgument: not of that coding, corrupt or truncated.
        BodyTooLarge: the inflated body is above `limit`.
    """
    adjective = _ADJECTIVE[coding]
    try:
        return (
            yield from inflating.inflating(
                body,
                coding,
                limit,
                whole_stream=True,
                judged_at=(limit // inflating.STEP + 1) * inflating.STEP,
            )
        )
    except zlib.error as exc:
        raise InvalidArgument(
            f"Failed to uncompress the {adjective} body: {exc}"
        ) from exc
    except inflating.TooLarge as exc:
        raise BodyTooLarge(too_large_message(limit)) from exc
    except inflating.CutShort as exc:
        raise InvalidArgument(
            f"Failed to uncompress the {adjective} body: truncated data"
        ) from exc


def gunzip(body: bytes, limit: int) -> bytes:
    """Inflate a gzip body of at most `limit` bytes once inflated, in one go.

    Raises:
        InvalidArgument: not gzip, corrupt or truncated.
        BodyTooLarge: the inflated body is above `limit`.
    """
    return inflating.finish(_body_steps(body, Coding.GZIP, limit))


async def inflate(body: bytes, coding: Coding, limit: int) -> bytes:
    """Inflate a body of at most `limit` bytes once inflated, off the event
    loop but for a couple of steps when the body is small.

    Raises:
        InvalidArgument: not of that coding, corrupt or truncated.
        BodyTooLarge: the inflated body is above `limit`.
    """
    return await inflating.inflated(_body_steps(body, coding, limit), len(body))
