"""A compressed gRPC request message inflated in steps
(:mod:`servekit_protocol.inflating`), its errors as gRPC statuses."""

from __future__ import annotations

import zlib

import grpc

from servekit_protocol import inflating as stepwise
from servekit_protocol.grpcweb_server import Aborted

STEP = stepwise.STEP
Steps = stepwise.Steps
advance = stepwise.advance
finish = stepwise.finish

_CODINGS = {"gzip": stepwise.Coding.GZIP, "deflate": stepwise.Coding.DEFLATE}


def inflate(data: memoryview, encoding: str, limit: int, step: int = STEP) -> bytes:
    """The message ``data`` inflated whole (see :func:`inflating`)."""
    return finish(inflating(data, encoding, limit, step))


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
    coding = _CODINGS.get(encoding)
    if coding is None:
        raise Aborted(
            grpc.StatusCode.UNIMPLEMENTED,
            f"Compression algorithm '{encoding or 'identity'}' is not supported",
        )
    try:
        return (yield from stepwise.inflating(data, coding, limit, step=step))
    except zlib.error as exc:
        raise Aborted(
            grpc.StatusCode.INTERNAL, f"Bad compressed message: {exc}"
        ) from exc
    except stepwise.TooLarge as exc:
        raise Aborted(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"Received message larger than max (more than {limit} bytes inflated)",
        ) from exc
