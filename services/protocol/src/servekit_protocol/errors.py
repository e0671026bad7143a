"""Errors raised while decoding or encoding the TF Serving protocol."""

from http import HTTPStatus


class ProtocolError(Exception):
    """Base of every servekit_protocol error.

    Attributes:
        status: the HTTP status a server answers with when this escapes.
        message: the text for the client (TF Serving's wording where one exists).
    """

    status: HTTPStatus = HTTPStatus.INTERNAL_SERVER_ERROR

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ProtocolError, ValueError):
    """The request cannot be decoded or does not match the signature.

    Also a ValueError, so callers that validate with ``except ValueError`` work.
    """

    status = HTTPStatus.BAD_REQUEST
