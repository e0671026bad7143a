"""REST error bodies: ``{"error": "<message>"}`` as TF Serving answers.

The HTTP status of a :class:`~modelserver.errors.ServingError` is its ``status``
(derived from the one gRPC-code table in :mod:`modelserver.errors`). Exceptions
that are not ``ServingError`` are bugs: their details stay in the log and the
client gets a generic 500 naming the request id to look for.
"""

from __future__ import annotations

from servekit_protocol import json_codec
from servekit_protocol.status import Code

from modelserver.errors import ServingError


class PayloadTooLarge(ServingError):
    """The request body exceeds the server's limit.

    gRPC answers an oversized message with RESOURCE_EXHAUSTED; over HTTP the
    precise status is 413 rather than the table's 429 (one of the table's
    documented refinements, ``servekit_protocol.status.HTTP_REFINEMENTS``).
    """

    grpc_code = Code.RESOURCE_EXHAUSTED


PayloadTooLarge.status = 413


def error_body(message: str) -> bytes:
    """The JSON body of an error answer."""
    return json_codec.error_body(message)


def internal_error_body(request_id: str) -> bytes:
    """The body of an unexpected failure, without its internal details."""
    return error_body(f"Internal server error (request id {request_id})")
