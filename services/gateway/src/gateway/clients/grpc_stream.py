"""What one unary gRPC call over HTTP/2 sends and reads, without any I/O.

The request's header block (``grpc-timeout`` from the remaining deadline,
metadata written as grpcio writes it), the answer's message collected from its
DATA frames as they arrive, and the status its headers, trailers or a stream
reset carry, mapped as gRPC's own clients map them (grpc/grpc
``doc/PROTOCOL-HTTP2.md`` and ``doc/http-grpc-status-mapping.md``). Used by
:mod:`gateway.clients.h2grpc`.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Sequence

import grpc
from h2.errors import ErrorCodes
from servekit_protocol import grpcweb

from gateway.clients.grpcweb import RpcFailed, status_code

_PREFIX = struct.Struct(">BI")
"""A gRPC message's prefix: its compressed flag and its length."""

_RESET_CODES = {
    ErrorCodes.REFUSED_STREAM: grpc.StatusCode.UNAVAILABLE,
    ErrorCodes.CANCEL: grpc.StatusCode.CANCELLED,
    ErrorCodes.ENHANCE_YOUR_CALM: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCodes.INADEQUATE_SECURITY: grpc.StatusCode.PERMISSION_DENIED,
}
"""RST_STREAM codes gRPC maps to a status other than INTERNAL."""


def request_headers(
    authority: str, path: str, timeout: float, metadata: Sequence[tuple[str, str]]
) -> list[tuple[bytes, bytes]]:
    """The header block of a call to ``path`` with ``timeout`` seconds left.

    Metadata whose key ends in ``-bin`` is sent base64 encoded without padding,
    as grpcio sends it; its value is taken as the binary value (a ``str`` as
    its Latin-1 bytes).
    """
    headers = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", path.encode("ascii")),
        (b":authority", authority.encode("ascii")),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        (b"grpc-timeout", grpcweb.encode_timeout(timeout).encode("ascii")),
    ]
    for key, value in metadata:
        name = key.lower().encode("ascii")
        raw = value.encode("latin-1") if isinstance(value, str) else bytes(value)
        if name.endswith(b"-bin"):
            raw = base64.b64encode(raw).rstrip(b"=")
        headers.append((name, raw))
    return headers


def head_error(headers: Sequence[tuple[bytes, bytes]], ended: bool) -> RpcFailed | None:
    """The error an answer's first header block carries, if any: a non-200
    HTTP status, a content type that is not gRPC, or a status sent alone
    (trailers-only, ``ended``)."""
    found = dict(headers)
    if b"grpc-status" in found and ended:
        return trailer_error(headers, message_seen=False)
    status = found.get(b":status", b"")
    if status != b"200":
        number = int(status) if status.isdigit() else 0
        code = status_code(str(grpcweb.code_for_http_status(number)))
        return RpcFailed(code, f"HTTP {status.decode('latin-1')} from the backend")
    content_type = found.get(b"content-type", b"")
    if not content_type.lower().startswith(b"application/grpc"):
        return RpcFailed(
            grpc.StatusCode.UNKNOWN,
            f"the backend answered {content_type.decode('latin-1')!r}, not gRPC",
        )
    if ended:
        return RpcFailed(grpc.StatusCode.UNKNOWN, "the answer ended without a status")
    return None


def trailer_error(
    trailers: Sequence[tuple[bytes, bytes]], message_seen: bool
) -> RpcFailed | None:
    """The error the trailers carry; None when they say OK and a message came."""
    found = dict(trailers)
    value = found.get(b"grpc-status")
    if value is None:
        return RpcFailed(grpc.StatusCode.UNKNOWN, "the answer ended without a status")
    code = status_code(value)
    if code is grpc.StatusCode.OK:
        if message_seen:
            return None
        return RpcFailed(grpc.StatusCode.INTERNAL, "OK status without a message")
    details = grpcweb.decode_status_message(
        found.get(b"grpc-message", b"").decode("latin-1")
    )
    return RpcFailed(code, details)


def reset_error(error_code: int | None) -> RpcFailed:
    """The error of a stream the backend reset with ``error_code``."""
    try:
        known = ErrorCodes(error_code if error_code is not None else -1)
    except ValueError:
        return RpcFailed(
            grpc.StatusCode.INTERNAL, f"the backend reset the stream ({error_code})"
        )
    return RpcFailed(
        _RESET_CODES.get(known, grpc.StatusCode.INTERNAL),
        f"the backend reset the stream ({known.name})",
    )


class AnswerReader:
    """One answer message collected from DATA frames as they arrive: its
    prefix read across frames, the message kept as the frames' bytes (views,
    not copied), its size checked against ``max_bytes`` as soon as the prefix
    announces it.

    Args:
        max_bytes: The largest message accepted.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.parts: list[bytes | memoryview] = []
        """The message's bytes so far, in order."""
        self._head = b""
        self._length: int | None = None
        self._received = 0

    @property
    def complete(self) -> bool:
        """Whether the whole message has arrived."""
        return self._length is not None and self._received == self._length

    @property
    def size(self) -> int | None:
        """The length the prefix announced (None before it came)."""
        return self._length

    def feed(self, data: bytes) -> None:
        """Take one DATA frame's bytes.

        Raises:
            RpcFailed: RESOURCE_EXHAUSTED, the message is over ``max_bytes``;
                INTERNAL, a compressed message (none was asked for) or bytes
                after the one message of a unary answer.
        """
        view = memoryview(data)
        while view:
            if self._length is None:
                need = _PREFIX.size - len(self._head)
                self._head += bytes(view[:need])
                view = view[need:]
                if len(self._head) < _PREFIX.size:
                    return
                flag, length = _PREFIX.unpack(self._head)
                if flag & grpcweb.COMPRESSED_FLAG:
                    raise RpcFailed(
                        grpc.StatusCode.INTERNAL,
                        "compressed answer message, though none was accepted",
                    )
                if length > self.max_bytes:
                    raise RpcFailed(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"answer message of {length} bytes over the gateway's "
                        f"limit of {self.max_bytes}",
                    )
                self._length = length
                continue
            left = self._length - self._received
            if left == 0:
                raise RpcFailed(
                    grpc.StatusCode.INTERNAL, "more than one message in a unary answer"
                )
            piece = view if len(view) <= left else view[:left]
            # The frame's own bytes object is kept when it is all message.
            self.parts.append(data if len(piece) == len(data) else piece)
            self._received += len(piece)
            view = view[len(piece) :]


__all__ = [
    "AnswerReader",
    "head_error",
    "request_headers",
    "reset_error",
    "trailer_error",
]
