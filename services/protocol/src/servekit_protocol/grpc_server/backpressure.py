"""Back-pressure both ways for one HTTP/2 connection.

Reading stops while the client does not read what it is sent (the transport's
write buffer is over its high-water mark) and while earlier bytes are still
being handed to ``h2`` a slice at a time; answers wait for the same. PING and
SETTINGS answers queued for a client that does not read are counted, and the
connection is dropped over the cap.
"""

from __future__ import annotations

import asyncio
import logging
import time

from h2.connection import H2Connection
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame

from servekit_protocol.grpc_server.calls import CallGone
from servekit_protocol.grpc_server.limits import Http2Limits
from servekit_protocol.grpc_server.meter import FrameMeter

logger = logging.getLogger(__name__)

_SLICE_BYTES = 16 * 1024
"""Received bytes handed to h2 in one go before the event loop runs again."""
CLOSING_SECONDS = 1.0
"""How long a closing connection may take to flush before it is aborted."""


class BackPressure(asyncio.Protocol):
    """The flow of bytes in and out of one connection; :meth:`receive` takes
    each slice of what the client sent."""

    def __init__(self, limits: Http2Limits, h2: H2Connection, meter: FrameMeter):
        self._limits = limits
        self._h2 = h2
        self._meter = meter
        self._transport: asyncio.Transport | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._window_opened = asyncio.Event()
        self._queued_control = 0
        self._waiting_writers = 0
        self._backlog = bytearray()
        self._backlog_scheduled = False
        self._reading_paused = False
        self.closed = False
        self.peer = ""
        self.stalled_since: float | None = None
        """Since when answers wait for a client that does not read."""
        self.closing_since: float | None = None
        """When closing began (unsent bytes are flushed first)."""

    def receive(self, data: bytes) -> None:
        """Handle the next bytes from the client."""
        raise NotImplementedError

    def pause_writing(self) -> None:
        # The client is not reading: read nothing more from it until it does, so
        # nothing it sends can make this side queue more answers.
        self._writable.clear()
        self._update_reading()

    def resume_writing(self) -> None:
        self._writable.set()
        self._queued_control = 0
        self._schedule_backlog()
        self._update_reading()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if not self._backlog and len(data) <= _SLICE_BYTES and self._writable.is_set():
            # The usual read: one slice with nothing before it, handed over as is.
            self.receive(data)
            if self._reading_paused:
                self._update_reading()
            return
        self._backlog += data
        self._read_backlog()

    def _read_backlog(self) -> None:
        # A slice at a time, the event loop running in between: a read of many
        # tiny requests must not hold the loop for the whole read.
        self._backlog_scheduled = False
        if self.closed or not self._writable.is_set():
            self._update_reading()
            return
        piece = bytes(self._backlog[:_SLICE_BYTES])
        del self._backlog[:_SLICE_BYTES]
        self.receive(piece)
        self._schedule_backlog()
        self._update_reading()

    def _schedule_backlog(self) -> None:
        if self._backlog and not self._backlog_scheduled and not self.closed:
            self._backlog_scheduled = True
            asyncio.get_running_loop().call_soon(self._read_backlog)

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        paused = bool(self._backlog) or not self._writable.is_set()
        if paused != self._reading_paused:
            self._reading_paused = paused
            if paused:
                transport.pause_reading()
            else:
                transport.resume_reading()

    async def _wait_writable(self) -> None:
        if not self._writable.is_set():
            await self._stall(self._writable)
        if self.closed:
            raise CallGone

    async def _stall(self, event: asyncio.Event) -> None:
        self._waiting_writers += 1
        if self.stalled_since is None:
            self.stalled_since = time.monotonic()
        try:
            await event.wait()
        finally:
            self._waiting_writers -= 1
            if not self._waiting_writers:
                self.stalled_since = None
        if self.closed:
            raise CallGone

    # --- writing and closing ---------------------------------------------------------

    def _flush(self, control_answers: int = 0) -> None:
        data = self._h2.data_to_send()
        transport = self._transport
        if transport is None or self.closed:
            return
        if data:
            transport.write(data)
        if not control_answers:
            return
        if not transport.get_write_buffer_size():
            self._queued_control = 0
            return
        self._queued_control += control_answers
        if self._queued_control > self._limits.max_queued_control_frames:
            logger.info(
                "gRPC connection from %s dropped: %d control answers unread",
                self.peer,
                self._queued_control,
            )
            self.closed = True
            transport.abort()

    def abandon(self, code: ErrorCodes, message: str) -> None:
        """GOAWAY ``code`` and close: the client broke a rule or a time limit."""
        if self.closed:
            return
        logger.info("gRPC connection from %s ended: %s", self.peer, message)
        self._write_goaway(code, message.encode("utf-8", errors="replace")[:256])
        self._close()

    def _write_goaway(self, code: ErrorCodes, debug: bytes = b"") -> None:
        # Written past h2's state machine, which would refuse to send anything
        # more once it has sent GOAWAY: calls under way still get answered.
        self._flush()
        frame = GoAwayFrame(0)
        frame.last_stream_id = self._h2.highest_inbound_stream_id
        frame.error_code = code
        frame.additional_data = debug
        if self._transport is not None and not self.closed:
            self._transport.write(frame.serialize())

    def _close(self) -> None:
        self.closed = True
        self.closing_since = time.monotonic()
        if self._transport is not None:
            self._transport.close()
