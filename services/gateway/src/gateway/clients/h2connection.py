"""One HTTP/2 connection to a backend's gRPC port and the unary calls on it,
for :class:`gateway.clients.h2grpc.H2Channel`.

``h2.connection.H2Connection`` parses and writes frames, keeps HPACK state,
stream states and flow-control windows. This class adds the client's policy:
the receive windows (acknowledged as each frame is read), the request body
written within the send window and the socket's back-pressure, each answer
collected frame by frame (:class:`~gateway.clients.grpc_stream.AnswerReader`,
capped), the stream reset (CANCEL) when a call ends without its answer, a
backend's GOAWAY (its calls up to the last stream id answered, the others
failed as not processed, the connection closed once drained), and PINGs on a
connection with calls under way that has gone quiet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, cast

import grpc
import h2.events
import h2.exceptions
import h2.settings
from h2.config import H2Configuration
from h2.connection import (
    ConnectionInputs,
    ConnectionState,
    H2Connection,
    H2ConnectionStateMachine,
)
from h2.errors import ErrorCodes
from servekit_protocol.byte_parts import byte_views, take
from servekit_protocol.grpc_server import frame_repr

from gateway.clients.grpc_stream import (
    AnswerReader,
    head_error,
    request_headers,
    reset_error,
    trailer_error,
)
from gateway.clients.grpcweb import RpcFailed
from gateway.clients.http import ConnectionFailed

logger = logging.getLogger(__name__)

# h2 builds repr(frame) of every frame it receives; made cheap once, here.
frame_repr.install()

_CONFIG = H2Configuration(
    client_side=True,
    header_encoding=None,
    # h2 refuses a header value with a leading or trailing space (RFC 9113
    # 8.2.1) as an error of the whole connection, failing every call on it;
    # gRPC servers send `grpc-message` values so (gRPC's percent-encoding
    # leaves spaces as they are: "Duplicate evaluation of signature: "), and
    # grpcio's client reads them. Only the answer's status, content type,
    # `grpc-status` and the percent-decoded `grpc-message` are read
    # (`grpc_stream`), and none is passed on as a header.
    validate_inbound_headers=False,
    normalize_inbound_headers=True,
)
STREAM_WINDOW_BYTES = 4 * 1024 * 1024
"""Receive window of each call: bytes the backend may send ahead of what has
been read (frames are acknowledged as soon as they are read)."""
CONNECTION_WINDOW_BYTES = 16 * 1024 * 1024
"""Receive window of a whole connection."""
MAX_HEADER_LIST_BYTES = 64 * 1024
"""Largest header or trailer block accepted from a backend (error details)."""
KEEPALIVE_SECONDS = 10.0
"""Quiet time (nothing received) after which a connection with calls under
way is sent a PING."""
PING_TIMEOUT_SECONDS = 10.0
"""A PING not answered within this is a dead connection: its calls fail
UNAVAILABLE and it is dropped."""
_FLUSH_BYTES = 256 * 1024
"""Request bytes written to the socket at once."""


class Unprocessed(ConnectionFailed):
    """The call's stream is above the last stream id of the backend's GOAWAY
    (or was to start on a connection closing): the backend did not process
    it, so it can be sent again on another connection."""


class _DrainableStateMachine(H2ConnectionStateMachine):
    """h2's connection states, except that a GOAWAY received leaves the
    client's connection open.

    RFC 9113 6.8: the calls up to the GOAWAY's last stream id may still be
    answered (a backend draining on SIGTERM answers them), but h2 moves the
    connection to CLOSED on receiving it (python-hyper/h2#1181) and refuses
    every later frame, those that came in the same read as the GOAWAY too.
    Only that one transition changes; new calls are kept off the connection
    by :attr:`BackendConnection.going_away` instead.
    """

    _transitions = {
        **H2ConnectionStateMachine._transitions,
        (ConnectionState.CLIENT_OPEN, ConnectionInputs.RECV_GOAWAY): (
            None,
            ConnectionState.CLIENT_OPEN,
        ),
    }


class ConnectionOwner(Protocol):
    """What a connection reports to and reads from (the channel)."""

    address: str
    max_answer_bytes: int

    def room_made(self) -> None: ...

    def forget(self, connection: BackendConnection) -> None: ...


@dataclass(eq=False)
class _Stream:
    reader: AnswerReader
    done: asyncio.Future[None]
    unprocessed: bool = False
    """Above a GOAWAY's last stream id: the backend ignores the stream, so it
    is not reset."""


class BackendConnection(asyncio.Protocol):
    """One HTTP/2 connection to a backend and its calls."""

    def __init__(self, channel: ConnectionOwner) -> None:
        self._channel = channel
        self._h2 = H2Connection(_CONFIG)
        self._h2.state_machine = _DrainableStateMachine()
        self._transport: asyncio.Transport | None = None
        self._streams: dict[int, _Stream] = {}
        self._writable = asyncio.Event()
        self._writable.set()
        self._window_opened = asyncio.Event()
        self.settled = asyncio.Event()
        """Set once the backend's first SETTINGS came (its stream limit among
        them), or the connection closed first."""
        self.closed = False
        self.going_away = False
        self._last_read = time.monotonic()
        self._ping_sent: float | None = None
        self._timer: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW_BYTES,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_BYTES,
            },
        )
        self._h2.initiate_connection()
        self._h2.increment_flow_control_window(CONNECTION_WINDOW_BYTES - 65_535)
        self._flush()
        self._schedule_tick()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.settled.set()
        if self._timer is not None:
            self._timer.cancel()
        reason = f": {exc}" if exc else ""
        self._fail_all(f"connection to the backend lost{reason}")
        self._channel.forget(self)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def data_received(self, data: bytes) -> None:
        self._last_read = time.monotonic()
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._break(f"HTTP/2 protocol error from the backend: {exc}")
            return
        for event in events:
            self._on_event(event)
        self._flush()

    # --- events --------------------------------------------------------------------

    def _on_event(self, event: h2.events.Event) -> None:
        if type(event) is h2.events.DataReceived:
            self._on_data(event)
        elif isinstance(event, h2.events.ResponseReceived):
            stream = self._streams.get(event.stream_id or 0)
            if stream is not None:
                error = head_error(event.headers or [], event.stream_ended is not None)
                if error is not None:
                    self._end(event.stream_id or 0, error)
        elif isinstance(event, h2.events.TrailersReceived):
            self._on_trailers(event)
        elif isinstance(event, h2.events.StreamEnded):
            # A trailers-only answer or trailers ended it already; else it
            # ended without a status.
            self._end(
                event.stream_id or 0,
                RpcFailed(grpc.StatusCode.UNKNOWN, "the answer ended without a status"),
            )
        elif isinstance(event, h2.events.StreamReset):
            self._end(event.stream_id or 0, reset_error(event.error_code))
        elif isinstance(
            event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged
        ):
            self._window_opened.set()
            self.settled.set()
            self._channel.room_made()
        elif isinstance(event, h2.events.PingAckReceived):
            self._ping_sent = None
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._on_goaway(event)

    def _on_data(self, event: h2.events.DataReceived) -> None:
        number = event.stream_id or 0
        with contextlib.suppress(h2.exceptions.ProtocolError):
            # The frame is read (or not wanted): its bytes leave the window.
            self._h2.acknowledge_received_data(
                event.flow_controlled_length or 0, number
            )
        stream = self._streams.get(number)
        if stream is None or stream.done.done() or event.data is None:
            return
        try:
            stream.reader.feed(event.data)
        except RpcFailed as exc:
            self._end(number, exc)
            self._reset(number)

    def _on_trailers(self, event: h2.events.TrailersReceived) -> None:
        number = event.stream_id or 0
        stream = self._streams.get(number)
        if stream is None:
            return
        reader = stream.reader
        error = trailer_error(event.headers or [], reader.size is not None)
        if error is None and not reader.complete:
            error = RpcFailed(
                grpc.StatusCode.INTERNAL, "the answer ended inside its message"
            )
        self._end(number, error)

    def _on_goaway(self, event: h2.events.ConnectionTerminated) -> None:
        # A backend may send more than one (gRPC servers first announce
        # 2^31-1, then the real last stream id): each fails what is above it.
        self.going_away = True
        last = event.last_stream_id or 0
        code = getattr(event.error_code, "name", event.error_code)
        for number, stream in self._streams.items():
            if number > last and not stream.done.done():
                # Not processed by the backend (RFC 9113 6.8): safe to send
                # again on another connection.
                stream.unprocessed = True
                self._end(
                    number,
                    Unprocessed(f"the backend is closing the connection ({code})"),
                )
        self._close_if_drained()

    def _close_if_drained(self) -> None:
        if self.going_away and not self._streams:
            self.close()

    def _end(self, number: int, error: RpcFailed | ConnectionFailed | None) -> None:
        """The call on stream ``number`` is over: answered, or failed."""
        stream = self._streams.get(number)
        if stream is None or stream.done.done():
            return
        if error is not None:
            stream.done.set_exception(error)
        else:
            stream.done.set_result(None)
        self._window_opened.set()

    def _fail_all(self, reason: str) -> None:
        for number in list(self._streams):
            self._end(number, ConnectionFailed(reason))

    def _break(self, reason: str) -> None:
        logger.warning("backend %s: %s", self._channel.address, reason)
        self.closed = True
        self._fail_all(reason)
        self._flush()
        if self._transport is not None:
            self._transport.abort()

    # --- for the channel -------------------------------------------------------------

    def has_room(self) -> bool:
        """Whether one more call may start here."""
        if self.closed or self.going_away:
            return False
        limit = self._h2.remote_settings.max_concurrent_streams
        return self._h2.open_outbound_streams < limit

    async def call(
        self,
        path: str,
        parts: Sequence[bytes | memoryview],
        deadline: float,
        metadata: Sequence[tuple[str, str]],
    ) -> list[bytes | memoryview]:
        """One call: its request sent, its answer message's parts.

        Raises:
            RpcFailed, ConnectionFailed: as
                :meth:`gateway.clients.h2grpc.H2Channel.unary`.
        """
        if self.closed or self.going_away:
            # Taken by the caller before the backend's GOAWAY came.
            raise Unprocessed("the connection to the backend is closing")
        try:
            number = self._h2.get_next_available_stream_id()
        except h2.exceptions.NoAvailableStreamIDError as exc:
            # Every stream id of the connection is spent: the next call opens
            # another one.
            self.going_away = True
            raise ConnectionFailed("stream ids of the connection spent") from exc
        stream = _Stream(
            AnswerReader(self._channel.max_answer_bytes),
            asyncio.get_running_loop().create_future(),
        )
        headers = request_headers(
            self._channel.address, path, deadline - time.monotonic(), metadata
        )
        self._streams[number] = stream
        answered = False
        try:
            try:
                self._h2.send_headers(number, headers)
            except h2.exceptions.TooManyStreamsError as exc:
                raise ConnectionFailed(f"no stream free: {exc}") from exc
            except h2.exceptions.ProtocolError as exc:
                raise RpcFailed(
                    grpc.StatusCode.INTERNAL, f"request headers refused: {exc}"
                ) from exc
            await self._send_body(number, stream, parts)
            await stream.done
            answered = True
            return stream.reader.parts
        finally:
            if not answered and not stream.unprocessed:
                # The caller gave up (deadline, cancellation) or the call
                # failed: the backend need not go on with it.
                self._reset(number)
            del self._streams[number]
            self._close_if_drained()
            self._channel.room_made()

    async def _send_body(
        self, number: int, stream: _Stream, parts: Sequence[bytes | memoryview]
    ) -> None:
        pending = byte_views(parts)
        unflushed = 0
        while pending and not stream.done.done():
            try:
                window = min(
                    self._h2.local_flow_control_window(number),
                    self._h2.max_outbound_frame_size,
                )
            except h2.exceptions.ProtocolError:
                return  # the stream was closed by the backend
            if window <= 0:
                self._flush()
                self._window_opened.clear()
                await self._window_opened.wait()
                continue
            piece = take(pending, window)
            try:
                self._h2.send_data(number, piece, end_stream=not pending)
            except h2.exceptions.ProtocolError:
                return  # the backend ended or reset the stream meanwhile
            unflushed += len(piece)
            if unflushed >= _FLUSH_BYTES or not pending:
                self._flush()
                unflushed = 0
                await self._writable.wait()
                if pending:
                    # Other calls get the loop between writes of a large request.
                    await asyncio.sleep(0)
        if self.closed:
            raise ConnectionFailed("connection to the backend lost")

    def _reset(self, number: int) -> None:
        if self.closed:
            return
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self._h2.reset_stream(number, ErrorCodes.CANCEL)
        self._flush()

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    # --- timers ----------------------------------------------------------------------

    def _schedule_tick(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(PING_TIMEOUT_SECONDS / 4, self._tick)

    def _tick(self) -> None:
        if self.closed:
            return
        now = time.monotonic()
        if self._ping_sent is not None:
            if now - self._ping_sent > PING_TIMEOUT_SECONDS:
                self._break("the backend did not answer a PING in time")
                return
        elif self._streams and now - self._last_read > KEEPALIVE_SECONDS:
            self._ping_sent = now
            self._h2.ping(b"servekit")
            self._flush()
        self._schedule_tick()

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)


__all__ = ["BackendConnection", "ConnectionOwner", "Unprocessed"]
