"""One gRPC call on an HTTP/2 stream: its metadata, request, handler and status.

What a call needs from its connection is :class:`CallStream`: send messages,
finish with a status, release the request's buffered bytes. The HTTP/2 side of
it (framing, windows, back-pressure) is the connection's.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import grpc
from google.protobuf.message import DecodeError
from hpack import NeverIndexedHeaderTuple

from servekit_protocol import grpcweb, messages
from servekit_protocol import inflating as stepwise
from servekit_protocol.buffers import release_later
from servekit_protocol.errors import ProtocolError
from servekit_protocol.grpc_server import inflating
from servekit_protocol.grpc_server.hpack_cache import OK_TRAILERS, RESPONSE_HEADERS
from servekit_protocol.grpcweb_server import Aborted, WebContext

logger = logging.getLogger(__name__)

Metadata = tuple[tuple[str, str | bytes], ...]
Authenticate = Callable[[str, Metadata, str], None]
"""A hook run on a call's path, metadata and peer (grpc's form,
``ipv4:host:port``) before any body byte is kept: it raises :class:`Aborted`
(UNAUTHENTICATED, say) to refuse the call."""

_CALL_HEADERS = frozenset(
    ("content-type", "te", "grpc-timeout", "grpc-encoding", "grpc-accept-encoding")
)
_PATH_IN_MESSAGES = 256
"""Characters of an unknown method's path repeated in its error answer."""


@dataclass(frozen=True, slots=True)
class OffloadedDecoder:
    """Decodes a method's request messages from a size up away from the event
    loop (in a worker process): a large message parsed in place holds the loop,
    and with it every other call, for as long as the parse takes.

    ``decode`` gets the message's bytes and gives what the handler receives in
    place of the parsed message; a ``DecodeError`` it raises answers as a
    failed parse does in place. The bytes are a view of the call's ended body,
    which the connection never changes afterwards (releasing it only drops the
    connection's reference), so the decoder's result may keep the view.
    """

    decode: Callable[[memoryview], Awaitable[Any]]
    threshold_bytes: int


Framed = tuple[bytes, bytes | memoryview]
"""A length-prefixed message as it is sent: the five prefix bytes and the
serialized message, kept apart. Joined, a large answer would be copied whole
on the event loop (64 MiB: tens of ms) only to be cut into DATA frames again."""


class CallGone(Exception):
    """The stream or its connection closed while the call was answering."""


class _CallDetails(NamedTuple):
    # What grpc's generic handlers look a method up by (grpc.HandlerCallDetails).
    method: str
    invocation_metadata: Metadata


class CallStream(Protocol):
    """What a call asks of its connection."""

    peer: str

    async def send_message(self, call: Call, framed: Framed) -> None: ...

    async def answer(
        self, call: Call, framed: Framed, trailing: Iterable[tuple[str, str | bytes]]
    ) -> None: ...

    async def finish(
        self,
        call: Call,
        code: grpc.StatusCode,
        details: str,
        trailing: Iterable[tuple[str, str | bytes]],
    ) -> None: ...

    def release(self, call: Call) -> None: ...

    def reset(self, call: Call) -> None: ...

    def forget(self, call: Call) -> None: ...


class ServicerContext(WebContext):
    """The gRPC-Web calls' context, plus what streaming methods and health use."""

    def __init__(
        self, metadata: Metadata, deadline: float | None, peer: str, call: Call
    ) -> None:
        super().__init__(metadata, deadline)
        self._peer = peer
        self._call = call
        self.code: grpc.StatusCode | None = None
        self.details = ""
        self.stream: CallStream | None = None

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def peer(self) -> str:
        return self._peer

    async def write(self, message: Any) -> None:
        """Send one message of a server-streaming answer.

        Raises:
            CallGone: The client went away.
        """
        assert self.stream is not None
        await self.stream.send_message(self._call, frame(self._call, message))


@dataclass(eq=False)
class Call:
    """A stream's call: what its headers said and what its body holds."""

    stream_id: int
    path: str
    body: bytearray = field(default_factory=bytearray)
    buffered: int = 0
    """Bytes of ``body`` counted against the connection's buffer cap."""
    deferred: int = 0
    """Received bytes whose window update waits for the buffer to drain."""
    ended: bool = False
    headers_sent: bool = False
    started: float = field(default_factory=time.monotonic)
    encoding: str = ""
    context: ServicerContext | None = None
    handler: Any = None
    max_receive_bytes: int = 0
    max_send_bytes: int = 0
    task: asyncio.Task[None] | None = None
    offload: OffloadedDecoder | None = None


def read_headers(
    call: Call, headers: Sequence[tuple[bytes, bytes]], peer: str
) -> ServicerContext:
    """The call's context from its request headers.

    Raises:
        Aborted: A bad timeout, content type or ``-bin`` value.
    """
    metadata: list[tuple[str, str | bytes]] = []
    deadline: float | None = None
    content_type = ""
    for raw_key, raw_value in headers:
        if raw_key.startswith(b":"):
            continue
        key = raw_key.decode("latin-1")
        value = raw_value.decode("latin-1")
        if key == "content-type":
            content_type = value
        elif key == "grpc-timeout":
            try:
                seconds = grpcweb.decode_timeout(value)
            except ProtocolError as exc:
                raise Aborted(grpc.StatusCode.INTERNAL, exc.message) from exc
            deadline = time.monotonic() + seconds
        elif key == "grpc-encoding":
            call.encoding = value
        elif key not in _CALL_HEADERS:
            if key.endswith("-bin"):
                metadata.append((key, _binary_value(key, raw_value, peer)))
            else:
                metadata.append((key, value))
    if not content_type.startswith("application/grpc"):
        raise Aborted(
            grpc.StatusCode.INTERNAL, f"Unsupported content type {content_type!r}"
        )
    return ServicerContext(tuple(metadata), deadline, peer, call)


def _binary_value(key: str, value: bytes, peer: str) -> bytes:
    try:
        return binascii.a2b_base64(value + b"=" * (-len(value) % 4), strict_mode=True)
    except binascii.Error as exc:
        # A client's mistake, not the server's: one line, no traceback.
        logger.info("gRPC call from %s: malformed %s metadata: %s", peer, key, exc)
        raise Aborted(
            grpc.StatusCode.INVALID_ARGUMENT, f"Malformed base64 in metadata {key!r}"
        ) from None


def find_handler(
    registered: dict[str, grpc.RpcMethodHandler],
    generic: Sequence[grpc.GenericRpcHandler],
    method: str,
    metadata: Metadata,
) -> Any:
    """The method's handler.

    Raises:
        Aborted: UNIMPLEMENTED for an unknown or client-streaming method.
    """
    handler: Any = registered.get(method)
    if handler is None:
        details = _CallDetails(method, metadata)
        for candidate in generic:
            handler = candidate.service(details)
            if handler is not None:
                break
    if handler is None or handler.request_streaming:
        shown = method.lstrip("/")[:_PATH_IN_MESSAGES]
        raise Aborted(grpc.StatusCode.UNIMPLEMENTED, f"Method not found: {shown}")
    return handler


def check_size(call: Call, limit: int) -> None:
    """Refuse a body that is or says it will be over ``limit``.

    Raises:
        Aborted: RESOURCE_EXHAUSTED.
    """
    body = call.body
    declared = int.from_bytes(body[1:5], "big") if len(body) >= 5 else 0
    if declared > limit or len(body) > limit + 5:
        raise Aborted(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"Received message larger than max ({max(declared, len(body) - 5)} vs. "
            f"{limit})",
        )


async def decode_request(call: Call, limit: int) -> Any:
    """The request message of a call whose body has ended.

    Raises:
        Aborted: Not one message, a bad compression or a bad message.
    """
    body = call.body
    check_size(call, limit)
    declared = int.from_bytes(body[1:5], "big") if len(body) >= 5 else None
    if declared is None or len(body) != 5 + declared:
        raise Aborted(grpc.StatusCode.INTERNAL, "Expected exactly one request message")
    offload = call.offload
    if body[0]:
        # The inflated message is handed over as the only reference to it, so
        # that a large one is given back in a thread once parsed.
        holder = [await _inflate_body(body, call.encoding, limit)]
        try:
            return await _parse(call, holder[0])
        finally:
            release_later(holder)
    if offload is not None and declared >= offload.threshold_bytes:
        # Not copied here: a copy of hundreds of MiB would hold the loop too.
        return await _parse(call, memoryview(body)[5:])
    # One copy (body[5:] would be a bytearray copy, then bytes a second).
    return await _parse(call, bytes(memoryview(body)[5:]))


async def _inflate_body(body: bytearray, encoding: str, limit: int) -> bytes:
    """The body's compressed message inflated, read in place (a copy of a large
    one would hold the loop as long as copying it takes)."""
    compressed = memoryview(body)[5:]
    try:
        steps = inflating.inflating(compressed, encoding, limit)
        return await stepwise.inflated(steps, len(compressed))
    finally:
        # The view lets go of the body now, not whenever the thread's work
        # item or a traceback does: the connection gives the body back in a
        # thread only when nothing else holds it. A call cancelled while the
        # thread still reads the body keeps the view (BufferError).
        with contextlib.suppress(BufferError):
            compressed.release()


async def _parse(call: Call, message: bytes | memoryview) -> Any:
    """The handler's request from the message's bytes."""
    offload = call.offload
    deserializer = call.handler.request_deserializer
    try:
        if offload is not None and len(message) >= offload.threshold_bytes:
            assert call.context is not None
            call.context.bind_request_id("grpc")
            return await offload.decode(memoryview(message))
        if deserializer is None:
            return message
        return deserializer(message)
    except DecodeError as exc:
        raise Aborted(
            grpc.StatusCode.INTERNAL, f"Failed to parse the request: {exc}"
        ) from exc


def frame(call: Call, message: Any) -> Framed:
    """A message serialized, and the gRPC prefix that frames it.

    Raises:
        Aborted: RESOURCE_EXHAUSTED over the send limit.
    """
    serializer = call.handler.response_serializer
    serialized: bytes | memoryview
    if isinstance(message, messages.Serialized):
        serialized = message.data
    elif serializer is not None:
        serialized = serializer(message)
    else:
        serialized = message
    limit = call.max_send_bytes
    if len(serialized) > limit:
        raise Aborted(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"Sent message larger than max ({len(serialized)} vs. {limit})",
        )
    return grpcweb.prefix(len(serialized)), serialized


def metadata_headers(
    metadata: Iterable[tuple[str, str | bytes]],
) -> list[tuple[bytes, bytes]]:
    """Metadata as header fields (``-bin`` values base64 without padding).

    Each field is a :class:`hpack.NeverIndexedHeaderTuple`: trailing metadata is
    mostly per call (the request id), so adding each value to the HPACK table
    would only evict entries that repeat, and ``hpack`` writes no other
    non-indexing literal (RFC 7541 §6.2.3).
    """
    headers: list[tuple[bytes, bytes]] = []
    for key, value in metadata:
        if key.endswith("-bin"):
            raw = value if isinstance(value, bytes) else value.encode()
            text = binascii.b2a_base64(raw, newline=False).rstrip(b"=")
        else:
            text = value.encode("latin-1") if isinstance(value, str) else value
        headers.append(NeverIndexedHeaderTuple(key.lower().encode("ascii"), text))
    return headers


def status_headers(
    code: grpc.StatusCode,
    details: str,
    trailing: Iterable[tuple[str, str | bytes]],
    trailers_only: bool,
) -> Sequence[tuple[bytes, bytes]]:
    """The trailers that end a call (with the response headers when none were
    sent: gRPC's trailers-only answer)."""
    if code is grpc.StatusCode.OK and not (details or trailing or trailers_only):
        # The usual end of a call, whose block the encoder has ready.
        return OK_TRAILERS
    headers = list(RESPONSE_HEADERS) if trailers_only else []
    headers.append((b"grpc-status", b"%d" % code.value[0]))
    if details:
        message = grpcweb.encode_status_message(details).encode("ascii")
        headers.append((b"grpc-message", message))
    headers.extend(metadata_headers(trailing))
    return headers


async def run_call(stream: CallStream, call: Call) -> None:
    """Serve a call whose request has fully arrived, to its last status."""
    try:
        await _serve(stream, call)
    except CallGone:
        pass
    except asyncio.CancelledError:
        stream.reset(call)
        raise
    finally:
        stream.forget(call)


async def _run_handler(handler: Any, request: Any, context: ServicerContext) -> Any:
    """The handler's answer (None for a streaming one, which writes its own).

    Raises:
        Aborted: The handler set a status other than OK.
    """
    if handler.response_streaming:
        answer = handler.unary_stream(request, context)
        if inspect.isasyncgen(answer):
            async for message in answer:
                await context.write(message)
        else:
            await answer
        return None
    response = await handler.unary_unary(request, context)
    if context.code not in (None, grpc.StatusCode.OK):
        raise Aborted(context.code, context.details)
    return response


async def _serve(stream: CallStream, call: Call) -> None:
    context = call.context
    assert context is not None
    handler = call.handler
    try:
        try:
            request = await decode_request(call, call.max_receive_bytes)
        finally:
            stream.release(call)
        remaining = context.time_remaining()
        if remaining is None:
            response = await _run_handler(handler, request, context)
        else:
            async with asyncio.timeout(remaining):
                response = await _run_handler(handler, request, context)
    except Aborted as exc:
        await stream.finish(
            call, exc.code, exc.details, exc.trailing or context.trailing
        )
    except TimeoutError:
        await stream.finish(
            call,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "Deadline Exceeded",
            context.trailing,
        )
    except (CallGone, asyncio.CancelledError):
        raise
    except Exception as exc:
        logger.exception("gRPC method %s failed", call.path)
        await stream.finish(
            call,
            grpc.StatusCode.UNKNOWN,
            f"Unexpected {type(exc).__name__}: {exc}",
            context.trailing,
        )
    else:
        if handler.response_streaming:
            await stream.finish(
                call,
                context.code or grpc.StatusCode.OK,
                context.details,
                context.trailing,
            )
            return
        try:
            framed = frame(call, response)
        except Aborted as exc:
            await stream.finish(call, exc.code, exc.details, context.trailing)
            return
        await stream.answer(call, framed, context.trailing)
