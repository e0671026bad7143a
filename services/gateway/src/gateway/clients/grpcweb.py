"""TF Serving gRPC calls carried as gRPC-Web over a backend's HTTP/1.1 port.

The servekit model server answers gRPC-Web on its REST port with the same
servicer as its gRPC port. Going there through the gateway's lean HTTP client
costs both processes less than a Python gRPC call: one gRPC call costs each
side about 0.3 ms of CPU in grpcio's call machinery, which at one client is
most of the gateway's added latency.

TF Serving has no gRPC-Web. A backend whose REST port answers a gRPC-Web call
with a client error (4xx other than 408 and 429: TF Serving answers 404 outside
``/v1/``) and no gRPC status is remembered as not speaking it, and its calls go
over gRPC from then on (that first call included).
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from servekit_protocol import grpcweb
from servekit_protocol.errors import ProtocolError

from gateway.clients.http import Body, HttpAnswer, HttpBackend, error_text

_CODES = {code.value[0]: code for code in grpc.StatusCode}
_CONTENT_TYPE = grpcweb.CONTENT_TYPE.decode()
_BUSY = frozenset({408, 429})


class RpcFailed(Exception):
    """The call ended with a gRPC status other than OK."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class NotSpoken(Exception):
    """The backend's HTTP port does not speak gRPC-Web."""


def status_code(value: str | bytes) -> grpc.StatusCode:
    """The status code of a ``grpc-status`` value (UNKNOWN when not one)."""
    try:
        number = int(value)
    except ValueError:
        return grpc.StatusCode.UNKNOWN
    return _CODES.get(number, grpc.StatusCode.UNKNOWN)


async def unary_call(
    http: HttpBackend,
    path: str,
    request: bytes,
    timeout: float,
    metadata: Sequence[tuple[str, str]],
) -> bytes:
    """Send one serialized request to ``path`` (``/package.Service/Method``) and
    return the serialized response.

    Raises:
        RpcFailed: the call ended with a status other than OK.
        NotSpoken: the port answered as a plain REST server (TF Serving).
        ConnectionFailed: no answer came back.
    """
    return await framed_call(http, path, grpcweb.frame(request), timeout, metadata)


async def framed_call(
    http: HttpBackend,
    path: str,
    framed: Body,
    timeout: float,
    metadata: Sequence[tuple[str, str]],
) -> bytes:
    """:func:`unary_call` with the request already framed (in one part or in
    several, sent one after the other).

    Raises:
        RpcFailed, NotSpoken, ConnectionFailed: as :func:`unary_call`.
    """
    headers = (
        ("content-type", _CONTENT_TYPE),
        ("x-grpc-web", "1"),
        ("grpc-timeout", grpcweb.encode_timeout(timeout)),
        *metadata,
    )
    answer = await http.request("POST", path, framed, headers)
    return answer_message(answer)


def answer_message(answer: HttpAnswer) -> bytes:
    """The response message of a gRPC-Web answer, or the error it carries."""
    headers = answer.headers
    in_headers = headers.get(b"grpc-status")
    if in_headers is not None:
        # Trailers-only: a status and no message.
        code = status_code(in_headers)
        details = grpcweb.decode_status_message(
            headers.get(b"grpc-message", b"").decode("latin-1")
        )
        if code is grpc.StatusCode.OK:
            raise RpcFailed(grpc.StatusCode.INTERNAL, "OK status without a message")
        raise RpcFailed(code, details)
    if not grpcweb.is_grpc_web(headers.get(b"content-type", b"")):
        if 400 <= answer.status < 500 and answer.status not in _BUSY:
            raise NotSpoken(f"HTTP {answer.status}: {error_text(answer.body)}")
        code = _CODES[grpcweb.code_for_http_status(answer.status)]
        raise RpcFailed(code, f"HTTP {answer.status}: {error_text(answer.body)}")
    try:
        message, trailers = grpcweb.response_parts(answer.body)
    except ProtocolError as exc:
        raise RpcFailed(grpc.StatusCode.INTERNAL, exc.message) from exc
    code = status_code(trailers.get("grpc-status", str(grpcweb.UNKNOWN)))
    if code is not grpc.StatusCode.OK:
        details = grpcweb.decode_status_message(trailers.get("grpc-message", ""))
        raise RpcFailed(code, details)
    if message is None:
        raise RpcFailed(grpc.StatusCode.INTERNAL, "OK status without a message")
    return message
