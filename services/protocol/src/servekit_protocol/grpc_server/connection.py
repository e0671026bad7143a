"""One client connection: ``h2`` owns HTTP/2, this class adds the server's policy.

``h2.connection.H2Connection`` parses and writes frames, keeps HPACK state,
stream states and flow-control windows, and refuses malformed requests (RFC 9113
§8: upper-case names, connection headers, missing pseudo-headers, a body that
does not match its content-length). On top of it sit the limits of
:class:`~servekit_protocol.grpc_server.limits.Http2Limits`: the frame meter's
flood checks, a cap on buffered request bytes (window updates wait above it),
reading paused while the client does not read what it is sent, and the
timestamps the server's timer checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, cast

import grpc
import h2.events
import h2.exceptions
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes

from servekit_protocol.buffers import release_later
from servekit_protocol.byte_parts import byte_views, take
from servekit_protocol.grpc_server import frame_repr, header_checks
from servekit_protocol.grpc_server.backpressure import CLOSING_SECONDS, BackPressure
from servekit_protocol.grpc_server.calls import (
    Call,
    CallGone,
    Framed,
    check_size,
    find_handler,
    read_headers,
    run_call,
    status_headers,
)
from servekit_protocol.grpc_server.hpack_cache import (
    RESPONSE_HEADERS,
    ConstantEncoder,
    RepeatDecoder,
)
from servekit_protocol.grpc_server.limits import local_settings
from servekit_protocol.grpc_server.meter import FrameMeter, PeerError, TokenBucket
from servekit_protocol.grpcweb_server import Aborted

if TYPE_CHECKING:
    from servekit_protocol.grpc_server.server import GrpcServer

logger = logging.getLogger(__name__)

# h2 builds repr(frame) of every frame it receives; made cheap once, here.
frame_repr.install()
# h2 checks a repeated request header block again; answered from memory.
header_checks.install()

_CONFIG = H2Configuration(
    client_side=False,
    header_encoding=None,
    validate_inbound_headers=True,
    normalize_inbound_headers=True,
    # The answers' headers are this module's own constants and metadata.
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
)
_DEFAULT_WINDOW = 65_535
_FLUSH_BYTES = 256 * 1024
"""DATA frames of a large answer written to the socket at once."""


class Http2Connection(BackPressure):
    """The HTTP/2 side of one client's gRPC calls."""

    def __init__(self, server: GrpcServer) -> None:
        self._server = server
        limits = server.limits
        self._h2 = H2Connection(_CONFIG)
        self._h2.local_settings = local_settings(limits, advertised=True)
        self._h2.encoder = ConstantEncoder()
        self._h2.decoder = RepeatDecoder(limits.max_header_list_size)
        self._meter = FrameMeter(
            limits, TokenBucket(limits.reset_rate_per_second, limits.reset_burst)
        )
        super().__init__(limits, self._h2, self._meter)
        self._calls: dict[int, Call] = {}
        self._buffered = 0
        self._deferred_any = False
        """Some call's window update waits for the buffer to drain."""
        self._going_away = False
        self.opened_at = time.monotonic()
        self.idle_since: float | None = self.opened_at
        """When the last call ended (None while calls are under way)."""

    # --- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self._transport = transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if not isinstance(peer, tuple):
            self.peer = "unix:"
        elif ":" in peer[0]:
            self.peer = f"ipv6:[{peer[0]}]:{peer[1]}"
        else:
            self.peer = f"ipv4:{peer[0]}:{peer[1]}"
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.set_write_buffer_limits(
            high=self._limits.write_high_water_bytes,
            low=self._limits.write_low_water_bytes,
        )
        self._h2.initiate_connection()
        # The SETTINGS sent advertise the stream limit. h2 would answer the
        # stream over it by ending the whole connection; it gets no limit of
        # its own, and _on_request refuses that one stream instead.
        self._h2.local_settings = local_settings(self._limits, advertised=False)
        if not self._server.admit(self):
            self._h2.close_connection(
                ErrorCodes.NO_ERROR, additional_data=b"too many connections"
            )
            self._flush()
            self.closed = True
            transport.close()
            return
        self._h2.increment_flow_control_window(
            self._limits.connection_window_bytes - _DEFAULT_WINDOW
        )
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: ARG002
        self.closed = True
        self._server.forget(self)
        for call in list(self._calls.values()):
            if call.task is not None:
                call.task.cancel()
        self._calls.clear()
        self._window_opened.set()
        self._writable.set()

    def receive(self, data: bytes) -> None:
        try:
            self._meter.feed(data)
            events = self._h2.receive_data(data)
        except PeerError as exc:
            self.abandon(exc.code, str(exc))
            return
        except h2.exceptions.ProtocolError as exc:
            # h2 has queued its GOAWAY already.
            logger.info("gRPC connection from %s broken: %s", self.peer, exc)
            self._flush()
            self._close()
            return
        try:
            for event in events:
                self._on_event(event)
        except PeerError as exc:
            self.abandon(exc.code, str(exc))
            return
        self._flush(self._meter.control_answers)

    # --- events --------------------------------------------------------------------

    def _on_event(self, event: h2.events.Event) -> None:
        # The three events of every call first, by exact type (h2 emits no
        # subclasses of them); the rest by isinstance.
        if type(event) is h2.events.DataReceived:
            self._on_data(event)
        elif type(event) is h2.events.StreamEnded:
            call = self._calls.get(event.stream_id)
            if call is not None and call.task is None:
                call.ended = True
                call.task = asyncio.get_running_loop().create_task(run_call(self, call))
        elif isinstance(event, h2.events.RequestReceived):
            self._on_request(event)
        elif isinstance(event, h2.events.StreamReset):
            self._on_reset(event.stream_id)
        elif isinstance(
            event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged
        ):
            self._window_opened.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._flush()
            self._close()

    def _on_request(self, event: h2.events.RequestReceived) -> None:
        number = event.stream_id
        if self._going_away:
            self._h2.reset_stream(number, ErrorCodes.REFUSED_STREAM)
            return
        if len(self._calls) >= self._limits.max_concurrent_streams:
            # As grpc's chttp2 transport does: the client may retry a refused
            # stream, and the calls under way go on. Each refusal spends the
            # reset allowance, so refusing is no free loop for a client.
            self._h2.reset_stream(number, ErrorCodes.REFUSED_STREAM)
            self._meter.count_reset()
            return
        headers = event.headers
        path = next((v for k, v in headers if k == b":path"), b"").decode("latin-1")
        server = self._server
        call = Call(
            number,
            path,
            max_receive_bytes=server.max_receive_bytes,
            max_send_bytes=server.max_send_bytes,
        )
        call.ended = event.stream_ended is not None
        self._calls[number] = call
        self.idle_since = None
        try:
            context = call.context = read_headers(call, headers, self.peer)
            context.stream = self
            metadata = context.invocation_metadata()
            call.handler = find_handler(
                server.registered, server.generic, path, metadata
            )
            if server.offloaded:
                call.offload = server.offloaded.get(path)
            if server.authenticate is not None:
                server.authenticate(path, metadata, self.peer)
        except Aborted as exc:
            self._answer_now(call, exc)

    def _on_data(self, event: h2.events.DataReceived) -> None:
        number = event.stream_id
        call = self._calls.get(number)
        length = event.flow_controlled_length or 0
        if call is None or call.task is not None or call.context is None:
            # Answered already: the bytes only count against the window.
            self._h2.acknowledge_received_data(length, number)
            return
        data = event.data
        call.body += data
        call.buffered += len(data)
        self._buffered += len(data)
        try:
            check_size(call, call.max_receive_bytes)
        except Aborted as exc:
            self._h2.acknowledge_received_data(length, number)
            self._answer_now(call, exc)
            return
        oldest = min((n for n, c in self._calls.items() if not c.ended), default=number)
        if self._buffered <= self._limits.max_buffered_request_bytes or (
            number == oldest
        ):
            self._h2.acknowledge_received_data(length, number)
        else:
            call.deferred += length
            self._deferred_any = True

    def _on_reset(self, number: int) -> None:
        call = self._calls.pop(number, None)
        if call is None:
            return
        self.release(call)
        if call.task is not None:
            call.task.cancel()
        self._after_call()

    def _answer_now(self, call: Call, exc: Aborted) -> None:
        """End a call from its headers or first bytes, before it runs."""
        self._calls.pop(call.stream_id, None)
        self.release(call)
        self._after_call()
        number = call.stream_id
        try:
            self._h2.send_headers(
                number,
                status_headers(exc.code, exc.details, exc.trailing, True),
                end_stream=True,
            )
            if self._h2.streams[number].open:
                # The client's remaining body is not wanted (gRPC's early status).
                self._h2.reset_stream(number, ErrorCodes.NO_ERROR)
                self._meter.count_reset()
        except (h2.exceptions.ProtocolError, KeyError):
            # The client reset the stream in the same read, and h2 may have
            # forgotten it already.
            return

    def _after_call(self) -> None:
        if not self._calls:
            self.idle_since = time.monotonic()

    # --- for the calls ---------------------------------------------------------------

    def release(self, call: Call) -> None:
        """The call's request bytes no longer count against the buffer cap."""
        if not call.buffered and not call.deferred:
            return
        self._buffered -= call.buffered
        call.buffered = 0
        # A large body's pages are given back in a thread: unmapping 256 MiB
        # holds the caller (here the loop) about 30 ms.
        holder = [call.body]
        call.body = bytearray()
        release_later(holder)
        if call.deferred:
            self._acknowledge(call.stream_id, call.deferred)
            call.deferred = 0
        if self._deferred_any and (
            self._buffered <= self._limits.max_buffered_request_bytes
        ):
            self._deferred_any = False
            for other in self._calls.values():
                if other.deferred:
                    self._acknowledge(other.stream_id, other.deferred)
                    other.deferred = 0
        self._flush()

    def _acknowledge(self, number: int, length: int) -> None:
        if self.closed:
            return
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self._h2.acknowledge_received_data(length, number)

    def forget(self, call: Call) -> None:
        """The call is over."""
        if self._calls.get(call.stream_id) is call:
            del self._calls[call.stream_id]
            self.release(call)
            self._after_call()

    def reset(self, call: Call) -> None:
        """Cancel the stream of a call cancelled on this side."""
        if self.closed or self._calls.get(call.stream_id) is not call:
            return
        self._cancel_stream(call.stream_id)

    async def send_message(self, call: Call, framed: Framed) -> None:
        """One framed message of an answer, after the headers if not sent yet;
        its DATA frames are views of it (``byte_parts``), as ``h2`` copies them.

        Raises:
            CallGone: The stream or the connection closed meanwhile.
        """
        await self._wait_writable()
        number = call.stream_id
        pending = byte_views(framed)
        unflushed = 0
        try:
            if not call.headers_sent:
                call.headers_sent = True
                self._h2.send_headers(number, RESPONSE_HEADERS)
            while pending:
                window = min(
                    self._h2.local_flow_control_window(number),
                    self._h2.max_outbound_frame_size,
                    self._limits.max_data_frame_bytes,
                )
                if window <= 0:
                    self._flush()
                    self._window_opened.clear()
                    await self._stall(self._window_opened)
                    continue
                piece = take(pending, window)
                self._h2.send_data(number, piece)
                unflushed += len(piece)
                if unflushed >= _FLUSH_BYTES or not pending:
                    # A write per frame would be a system call per 16 KiB.
                    self._flush()
                    unflushed = 0
                    await self._wait_writable()
                    # While the client reads as fast as it is sent to, nothing
                    # above waits: the other calls get the loop between writes.
                    await asyncio.sleep(0)
        except h2.exceptions.ProtocolError as exc:
            raise CallGone from exc

    async def answer(
        self, call: Call, framed: Framed, trailing: Iterable[tuple[str, str | bytes]]
    ) -> None:
        """A unary call's message and status.

        Raises:
            CallGone: The stream or the connection closed meanwhile.
        """
        await self._wait_writable()
        number = call.stream_id
        prefix, message = framed
        try:
            window = min(
                self._h2.local_flow_control_window(number),
                self._h2.max_outbound_frame_size,
                self._limits.max_data_frame_bytes,
            )
            if len(prefix) + len(message) <= window:
                # The usual case: headers, message and trailers in one write.
                call.headers_sent = True
                self._h2.send_headers(number, RESPONSE_HEADERS)
                self._h2.send_data(number, prefix + message)
                self._h2.send_headers(
                    number,
                    status_headers(grpc.StatusCode.OK, "", trailing, False),
                    end_stream=True,
                )
                self._flush()
                return
        except h2.exceptions.ProtocolError as exc:
            raise CallGone from exc
        await self.send_message(call, framed)
        await self.finish(call, grpc.StatusCode.OK, "", trailing)

    async def finish(
        self,
        call: Call,
        code: grpc.StatusCode,
        details: str,
        trailing: Iterable[tuple[str, str | bytes]],
    ) -> None:
        """End the call with its status (trailers-only when nothing was sent).

        Raises:
            CallGone: The stream or the connection closed meanwhile.
        """
        await self._wait_writable()
        headers = status_headers(code, details, trailing, not call.headers_sent)
        try:
            self._h2.send_headers(call.stream_id, headers, end_stream=True)
        except h2.exceptions.ProtocolError as exc:
            raise CallGone from exc
        self._flush()

    # --- for the server --------------------------------------------------------------

    def go_away(self) -> None:
        """Tell the client no stream after the last one will be served."""
        self._going_away = True
        self._write_goaway(ErrorCodes.NO_ERROR)

    def calls(self) -> list[asyncio.Task[None]]:
        """The calls under way."""
        return [c.task for c in self._calls.values() if c.task is not None]

    def close(self) -> None:
        self._close()

    def check_timers(self, now: float) -> None:
        """Apply the handshake, idle, header, body and send-stall timeouts."""
        if self.closed:
            if (
                self.closing_since is not None
                and now - self.closing_since > CLOSING_SECONDS
                and self._transport is not None
            ):
                # The client does not read what is left to flush.
                self._transport.abort()
            return
        limits = self._limits
        meter = self._meter
        if not meter.settings_seen:
            if now - self.opened_at > limits.handshake_timeout_seconds:
                self.abandon(ErrorCodes.PROTOCOL_ERROR, "no handshake in time")
            return
        if (
            meter.block_started is not None
            and now - meter.block_started > limits.header_read_timeout_seconds
        ):
            self.abandon(ErrorCodes.PROTOCOL_ERROR, "a header block not ended in time")
            return
        if (
            self.stalled_since is not None
            and now - self.stalled_since > limits.send_stall_timeout_seconds
        ):
            logger.info("gRPC connection from %s dropped: not reading", self.peer)
            self.closed = True
            if self._transport is not None:
                self._transport.abort()
            return
        if self.idle_since is not None:
            if now - self.idle_since > limits.idle_timeout_seconds:
                self.abandon(ErrorCodes.NO_ERROR, "idle")
            return
        for call in list(self._calls.values()):
            if not call.ended and now - call.started > limits.body_read_timeout_seconds:
                logger.info(
                    "gRPC call %s from %s: body not received in time",
                    call.path,
                    self.peer,
                )
                self._on_reset(call.stream_id)
                self._cancel_stream(call.stream_id)

    def _cancel_stream(self, number: int) -> None:
        try:
            self._h2.reset_stream(number, ErrorCodes.CANCEL)
        except h2.exceptions.ProtocolError:
            return
        self._flush()
