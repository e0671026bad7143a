"""Unary gRPC calls to a backend over HTTP/2, framed by the ``h2`` library.

grpc.aio reads a large answer in its Cython receive path, which copies the
byte buffer into Python bytes twice with the GIL held: a 64 MiB answer holds
the gateway's event loop 85-100 ms at a stretch. Here the answer is read as
its DATA frames arrive, one socket read at a time (at most 256 KiB of frames
per callback), kept as the frames' bytes, and joined once whole in a thread
(``bytes.join`` releases the GIL from 1 MiB), so no stretch of the loop grows
with the answer's size.

``h2.connection.H2Connection`` parses and writes frames, keeps HPACK state,
stream states and flow-control windows; this module keeps only the client's
policy: one connection per backend address, reused and multiplexed up to the
backend's SETTINGS_MAX_CONCURRENT_STREAMS (a further connection beyond it,
up to :data:`MAX_CONNECTIONS`, then callers wait), a reconnect backoff of
100 ms doubling to 1 s as ``pool.CHANNEL_OPTIONS`` gives grpc.aio, PINGs on a
connection that has calls under way and has gone quiet, bounded receive
windows acknowledged as frames are read, a cap on the answer's size, and the
stream reset (CANCEL) when the caller gives up or its deadline passes.

Errors are raised as the pool expects them of grpc.aio: a gRPC status as
:class:`~gateway.clients.grpcweb.RpcFailed`, a backend that cannot be reached
or drops the connection as :class:`~gateway.clients.http.ConnectionFailed`
(UNAVAILABLE, retried).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import grpc
import h2.events
import h2.exceptions
import h2.settings
from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
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
    validate_inbound_headers=True,
    normalize_inbound_headers=True,
)
STREAM_WINDOW_BYTES = 4 * 1024 * 1024
"""Receive window of each call: bytes the backend may send ahead of what has
been read (frames are acknowledged as soon as they are read)."""
CONNECTION_WINDOW_BYTES = 16 * 1024 * 1024
"""Receive window of a whole connection."""
MAX_HEADER_LIST_BYTES = 64 * 1024
"""Largest header or trailer block accepted from a backend (error details)."""
MAX_CONNECTIONS = 8
"""Connections to one backend when every one of them is at the backend's
stream limit; further callers wait for a stream to end."""
MIN_BACKOFF_SECONDS = 0.1
MAX_BACKOFF_SECONDS = 1.0
"""After a failed connection attempt, calls fail at once (UNAVAILABLE) until
the backoff has passed; it doubles on each failure, as grpc's reconnect
backoff (``pool.CHANNEL_OPTIONS``)."""
CONNECT_TIMEOUT_SECONDS = 5.0
"""Longest wait for a TCP connection, within the call's own deadline."""
KEEPALIVE_SECONDS = 10.0
"""Quiet time (nothing received) after which a connection with calls under
way is sent a PING."""
PING_TIMEOUT_SECONDS = 10.0
"""A PING not answered within this is a dead connection: its calls fail
UNAVAILABLE and it is dropped."""
JOIN_IN_THREAD_BYTES = 1024 * 1024
"""Answers from this size up are joined in a thread (the GIL released)."""
_FLUSH_BYTES = 256 * 1024
"""Request bytes written to the socket at once."""


@dataclass(eq=False)
class _Stream:
    reader: AnswerReader
    done: asyncio.Future[None]


class _Connection(asyncio.Protocol):
    """One HTTP/2 connection to a backend and its calls."""

    def __init__(self, channel: H2Channel) -> None:
        self._channel = channel
        self._h2 = H2Connection(_CONFIG)
        self._transport: asyncio.Transport | None = None
        self._streams: dict[int, _Stream] = {}
        self._writable = asyncio.Event()
        self._writable.set()
        self._window_opened = asyncio.Event()
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
        self.going_away = True
        last = event.last_stream_id or 0
        code = getattr(event.error_code, "name", event.error_code)
        for number in [n for n in self._streams if n > last]:
            # Not processed by the backend (RFC 9113 6.8): safe to retry.
            self._end(
                number,
                ConnectionFailed(f"the backend is closing the connection ({code})"),
            )
        if not self._streams:
            if self._transport is not None:
                self._transport.close()
            return
        # The calls up to ``last`` are still answered (a backend draining on
        # SIGTERM), but h2 (4.4.1) moves the connection to CLOSED on a GOAWAY
        # and would refuse their frames: it is put back to open, and
        # ``going_away`` keeps new calls off it.
        self._h2.state_machine.state = ConnectionState.CLIENT_OPEN

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
            RpcFailed, ConnectionFailed: as :meth:`H2Channel.unary`.
        """
        number = self._h2.get_next_available_stream_id()
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
            if not answered:
                # The caller gave up (deadline, cancellation) or the call
                # failed: the backend need not go on with it.
                self._reset(number)
            del self._streams[number]
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


class H2Channel:
    """Every connection to one backend address.

    Args:
        address: ``host:port`` of the backend's gRPC port.
        max_answer_bytes: The largest answer message accepted
            (RESOURCE_EXHAUSTED beyond).
    """

    def __init__(self, address: str, max_answer_bytes: int) -> None:
        self.address = address
        self.max_answer_bytes = max_answer_bytes
        host, _, port = address.rpartition(":")
        self._host = host.strip("[]")
        self._port = int(port)
        self._connections: list[_Connection] = []
        self._connecting: asyncio.Task[_Connection] | None = None
        self._room = asyncio.Event()
        self._backoff = MIN_BACKOFF_SECONDS
        self._retry_at = 0.0
        self._last_error = ""

    async def unary(
        self,
        path: str,
        parts: Sequence[bytes | memoryview],
        timeout: float,
        metadata: Sequence[tuple[str, str]],
    ) -> bytes:
        """Call ``path`` (``/package.Service/Method``) with the framed request
        ``parts`` (prefix and message, sent one after the other); the answer
        message's bytes.

        Raises:
            RpcFailed: the call ended with a status other than OK
                (DEADLINE_EXCEEDED when ``timeout`` seconds passed first).
            ConnectionFailed: the backend could not be reached or dropped the
                connection.
        """
        deadline = time.monotonic() + timeout
        try:
            async with asyncio.timeout(timeout):
                connection = await self._connection()
                answer = await connection.call(path, parts, deadline, metadata)
        except TimeoutError:
            raise RpcFailed(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"deadline exceeded waiting for backend {self.address}",
            ) from None
        return await _joined(answer)

    def room_made(self) -> None:
        """A stream ended, or a backend allowed more: waiting callers go on."""
        self._room.set()

    def forget(self, connection: _Connection) -> None:
        """The connection closed."""
        if connection in self._connections:
            self._connections.remove(connection)
        self._room.set()

    async def _connection(self) -> _Connection:
        while True:
            for connection in self._connections:
                if connection.has_room():
                    return connection
            if self._connecting is None:
                if len(self._connections) >= MAX_CONNECTIONS:
                    self._room.clear()
                    await self._room.wait()
                    continue
                if time.monotonic() < self._retry_at:
                    raise ConnectionFailed(
                        f"backend {self.address} unreachable: {self._last_error}"
                    )
                self._connecting = asyncio.ensure_future(self._open())
                self._connecting.add_done_callback(self._opened)
            await asyncio.shield(self._connecting)

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
                _, connection = await loop.create_connection(
                    lambda: _Connection(self), self._host, self._port
                )
        except (OSError, TimeoutError) as exc:
            self._last_error = str(exc) or type(exc).__name__
            self._retry_at = time.monotonic() + self._backoff
            self._backoff = min(MAX_BACKOFF_SECONDS, self._backoff * 2)
            raise ConnectionFailed(
                f"cannot connect to backend {self.address}: {self._last_error}"
            ) from exc
        self._backoff = MIN_BACKOFF_SECONDS
        self._retry_at = 0.0
        self._connections.append(connection)
        return connection

    def _opened(self, task: asyncio.Task[_Connection]) -> None:
        self._connecting = None
        if not task.cancelled():
            # Retrieved here too: every caller that waited may have gone.
            task.exception()

    async def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        for connection in list(self._connections):
            connection.close()
        self._connections.clear()


async def _joined(parts: list[bytes | memoryview]) -> bytes:
    """The answer message's parts as one bytes object: joined in a thread
    from :data:`JOIN_IN_THREAD_BYTES` up, where ``bytes.join`` copies without
    the GIL, so the loop is not held for the copy."""
    if len(parts) == 1 and isinstance(parts[0], bytes):
        return parts[0]
    if sum(map(len, parts)) < JOIN_IN_THREAD_BYTES:
        return b"".join(parts)
    return await asyncio.get_running_loop().run_in_executor(None, b"".join, parts)


__all__ = ["H2Channel"]
