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

import asyncio
import bisect
import itertools
import struct
from collections.abc import Sequence

import grpc
from servekit_protocol import grpcweb
from servekit_protocol.errors import InvalidArgument, ProtocolError

from gateway.clients.http import Body, HttpAnswer, HttpBackend, error_text

_CODES = {code.value[0]: code for code in grpc.StatusCode}
_CONTENT_TYPE = grpcweb.CONTENT_TYPE.decode()
_BUSY = frozenset({408, 429})
_PREFIX = struct.Struct(">BI")
"""A gRPC-Web frame's prefix: its flags and its payload's length."""


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
    answer = await http.request("POST", path, framed, headers, joined=False)
    if answer.chunks:
        return await chunked_answer_message(answer)
    return answer_message(answer)


def answer_message(answer: HttpAnswer) -> bytes:
    """The response message of a gRPC-Web answer, or the error it carries."""
    _check_head(answer)
    try:
        message, trailers = grpcweb.response_parts(answer.body)
    except ProtocolError as exc:
        raise RpcFailed(grpc.StatusCode.INTERNAL, exc.message) from exc
    return _message_or_error(message, trailers)


async def chunked_answer_message(answer: HttpAnswer) -> bytes:
    """:func:`answer_message` of an answer left as its chunks: the message is
    copied out of them in one go, in a thread (``bytes.join`` releases the GIL
    from 1 MiB), instead of the body being joined and the message sliced out
    of it on the event loop (two copies into fresh pages, some 45 ms of CPU
    each for 64 MiB)."""
    content_type = answer.headers.get(b"content-type", b"")
    if b"grpc-status" in answer.headers or not grpcweb.is_grpc_web(content_type):
        # An error: its text is read from the joined body.
        chunks, answer.chunks = answer.chunks, []
        loop = asyncio.get_running_loop()
        answer.body = await loop.run_in_executor(None, b"".join, chunks)
        return answer_message(answer)
    body = ChunkedBody(answer.chunks)
    trailers: dict[str, str] = {}
    message: tuple[int, int] | None = None
    try:
        for flag, start, stop in body.frames():
            if flag & grpcweb.TRAILER_FLAG:
                trailers.update(grpcweb.parse_trailers(body.read(start, stop)))
            elif flag & grpcweb.COMPRESSED_FLAG:
                raise InvalidArgument("compressed gRPC-Web messages are not supported")
            else:
                message = (start, stop)
    except ProtocolError as exc:
        raise RpcFailed(grpc.StatusCode.INTERNAL, exc.message) from exc
    _message_or_error(b"" if message is not None else None, trailers)
    assert message is not None
    pieces = body.views(*message)
    return await asyncio.get_running_loop().run_in_executor(None, b"".join, pieces)


class ChunkedBody:
    """A body as the chunks it was received in, read without joining them.

    Args:
        chunks: The body's chunks, in order (kept, never changed).
    """

    def __init__(self, chunks: Sequence[bytes]) -> None:
        self._chunks = chunks
        self._starts = [0, *itertools.accumulate(map(len, chunks))]
        self.size = self._starts[-1]

    def views(self, start: int, stop: int) -> list[memoryview]:
        """Views of bytes ``start`` to ``stop`` (within the body), in order."""
        views: list[memoryview] = []
        index = bisect.bisect_right(self._starts, start) - 1
        while start < stop:
            base = self._starts[index]
            end = min(stop, self._starts[index + 1])
            views.append(memoryview(self._chunks[index])[start - base : end - base])
            start = end
            index += 1
        return views

    def read(self, start: int, stop: int) -> bytes:
        """Bytes ``start`` to ``stop``, copied (for a few bytes)."""
        return b"".join(self.views(start, stop))

    def frames(self) -> list[tuple[int, int, int]]:
        """Every gRPC-Web frame's ``(flags, start, stop)`` of its payload.

        Raises:
            InvalidArgument: a frame is cut short (as
                :func:`servekit_protocol.grpcweb.split_frames`).
        """
        frames: list[tuple[int, int, int]] = []
        offset = 0
        while offset < self.size:
            if self.size - offset < _PREFIX.size:
                raise InvalidArgument("gRPC-Web body ends inside a frame header")
            flag, length = _PREFIX.unpack(self.read(offset, offset + _PREFIX.size))
            offset += _PREFIX.size
            if self.size - offset < length:
                raise InvalidArgument(
                    f"gRPC-Web frame announces {length} bytes "
                    f"but {self.size - offset} follow"
                )
            frames.append((flag, offset, offset + length))
            offset += length
        return frames


def _check_head(answer: HttpAnswer) -> None:
    """Raise the error an answer's status and headers carry, if any."""
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


def _message_or_error(message: bytes | None, trailers: dict[str, str]) -> bytes:
    """The message, or the error the trailers (or its absence) carry."""
    code = status_code(trailers.get("grpc-status", str(grpcweb.UNKNOWN)))
    if code is not grpc.StatusCode.OK:
        details = grpcweb.decode_status_message(trailers.get("grpc-message", ""))
        raise RpcFailed(code, details)
    if message is None:
        raise RpcFailed(grpc.StatusCode.INTERNAL, "OK status without a message")
    return message
