"""Limits on the HTTP/1.1 listeners, as policy on uvicorn's httptools protocol.

uvicorn (with httptools, i.e. llhttp, parsing) serves both services' HTTP ports;
the parser is theirs. On its own it keeps a connection that never sends a request,
trickles its headers or its body open forever, buffers headers of any size and
accepts connections until the process runs out of file descriptors. This module
adds, per connection:

* a header-read timeout: from the connection's first byte or the first byte of
  each further request until the end of its headers (slowloris). A connection
  that sent part of a request gets ``408``; one that sent nothing is closed;
* a body-read timeout: from the end of the headers until the last body byte
  (a client trickling its body gets ``408``);
* the idle (keep-alive) timeout between requests, uvicorn's own;
* a header size cap: more than ``max_header_bytes`` before the end of the
  headers gets ``431``. Bytes are counted per read, so the cap holds within one
  read (at most 256 KiB) of the figure, and nothing is buffered past it;
* a connection cap per listener: a connection above ``max_connections`` is
  answered ``503`` and closed at once instead of being held.

Every refusal and timeout is logged, at most once a second per kind, with the
count of the others since the previous line, so an attack cannot flood the log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger(__name__)

DEFAULT_HEADER_TIMEOUT = 10.0
"""Seconds a request's line and headers may take to arrive."""
DEFAULT_BODY_TIMEOUT = 60.0
"""Seconds a request body may take to arrive, from the end of its headers."""
DEFAULT_MAX_HEADER_BYTES = 16 * 1024
"""Bytes of request line and headers accepted (h11's and nghttp2's figure)."""
DEFAULT_MAX_CONNECTIONS = 512
"""Connections a listener holds at once; kept well under the usual 1,024 file
descriptors so the process can still accept, answer and close the next one."""


@dataclass(frozen=True, slots=True)
class ListenerLimits:
    """What one HTTP/1.1 listener allows a client.

    Attributes:
        idle_timeout: Seconds an idle keep-alive connection is kept between
            requests.
        header_timeout: Seconds from a request's first byte to the end of its
            headers (also from the connection's opening to its first byte).
        body_timeout: Seconds from the end of the headers to the end of the body.
        max_header_bytes: Bytes of request line and headers accepted.
        max_connections: Connections held at once; more are answered 503 and
            closed.
    """

    idle_timeout: float = 5.0
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    max_connections: int = DEFAULT_MAX_CONNECTIONS


@dataclass
class _ThrottledLog:
    """One log line per second per event kind; the rest are counted into it."""

    listener: str
    interval: float = 1.0
    _last: dict[str, float] = field(default_factory=dict)
    _skipped: dict[str, int] = field(default_factory=dict)

    def event(self, kind: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, -self.interval) < self.interval:
            self._skipped[kind] = self._skipped.get(kind, 0) + 1
            return
        self._last[kind] = now
        skipped = self._skipped.pop(kind, 0)
        logger.warning(
            "%s: " + message + " (%d more since the last such line)",
            self.listener,
            *args,
            skipped,
            extra={"listener": self.listener, "event": kind, "skipped": skipped},
        )


class _HeadersTooLarge(Exception):
    """Raised from the parser's callback to stop parsing an oversized request."""


def _answer(status: int, reason: str, message: str) -> bytes:
    body = orjson.dumps({"error": message})
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n%s"
        % (status, reason.encode("ascii"), len(body), body)
    )


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with :class:`ListenerLimits` enforced.

    Made per listener by :func:`protocol_class`, which sets the class attributes.
    """

    limits: ClassVar[ListenerLimits] = ListenerLimits()
    events: ClassVar[_ThrottledLog] = _ThrottledLog("http")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Read by uvicorn when it arms its keep-alive timer after each answer.
        self.timeout_keep_alive = self.limits.idle_timeout  # type: ignore[assignment]
        self._deadline: asyncio.TimerHandle | None = None
        # Between the end of one request's body and the end of the next one's
        # headers, bytes count towards the header cap.
        self._awaiting_headers = True
        self._header_bytes = 0
        self._in_body = False
        self._refused = False
        self._oversized = False

    # ---- connections ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        limit = self.limits.max_connections
        if len(self.connections) >= limit:
            self._refused = True
            self.transport = transport
            self.events.event(
                "connection_refused",
                "refused a connection from %s: %d connections open, the limit is %d",
                _peer(transport),
                len(self.connections),
                limit,
            )
            transport.write(
                _answer(503, "Service Unavailable", "too many connections; retry later")
            )
            transport.close()
            return
        super().connection_made(transport)
        self._arm(self.limits.header_timeout, self._header_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._refused:
            return
        super().connection_lost(exc)

    # ---- reading -------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._awaiting_headers:
            self._header_bytes += len(data)
        super().data_received(data)
        if self.transport.is_closing():
            return
        # Timers are armed only for a request this read left unfinished (armed
        # in the same loop turn, so counted from its first byte): a request
        # that arrives whole costs none.
        if self._awaiting_headers:
            if self._header_bytes > self.limits.max_header_bytes:
                self._refuse_headers()
            elif self._header_bytes and self._deadline is None:
                self._arm(self.limits.header_timeout, self._header_timed_out)
        elif self._in_body and self._deadline is None:
            self._arm(self.limits.body_timeout, self._body_timed_out)

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._header_bytes = 0
        self._disarm()
        size = len(self.url) + sum(
            len(name) + len(value) + 4 for name, value in self.headers
        )
        if size > self.limits.max_header_bytes:
            # uvicorn answers a parser callback's exception with 400 through
            # send_400_response, which answers 431 instead for this one.
            self._oversized = True
            raise _HeadersTooLarge
        self._in_body = True
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        self._in_body = False
        self._awaiting_headers = True
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        if not self._oversized:
            super().send_400_response(msg)
            return
        self._refuse_headers()

    def _refuse_headers(self) -> None:
        self.events.event(
            "headers_too_large",
            "refused a request from %s: more than %d bytes of headers",
            _peer(self.transport),
            self.limits.max_header_bytes,
        )
        self._close_with(
            _answer(
                431,
                "Request Header Fields Too Large",
                f"request headers larger than {self.limits.max_header_bytes} bytes",
            )
        )

    # ---- timers --------------------------------------------------------------------

    def _arm(self, seconds: float, handler: Any) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, handler)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _header_timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        started = self._header_bytes > 0
        self.events.event(
            "header_timeout",
            "closed a connection from %s: no complete request headers in %.3g s",
            _peer(self.transport),
            self.limits.header_timeout,
        )
        if started:
            self._close_with(
                _answer(
                    408,
                    "Request Timeout",
                    "request headers not received within "
                    f"{self.limits.header_timeout:g} s",
                )
            )
        else:
            self.transport.close()

    def _body_timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        self.events.event(
            "body_timeout",
            "closed a connection from %s: request body not received in %.3g s",
            _peer(self.transport),
            self.limits.body_timeout,
        )
        self._close_with(
            _answer(
                408,
                "Request Timeout",
                f"request body not received within {self.limits.body_timeout:g} s",
            )
        )

    def _close_with(self, answer: bytes) -> None:
        cycle = self.cycle
        if cycle is not None and cycle.response_complete:
            answer = b""
        elif cycle is not None:
            if cycle.response_started:
                # Half an answer is out already: closing is the only signal left.
                answer = b""
            # The application sees the client gone: its receive() returns
            # http.disconnect at once and whatever it sends is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
        if answer:
            self.transport.write(answer)
        self.transport.close()


def _peer(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


def protocol_class(limits: ListenerLimits, listener: str) -> type[HttpToolsProtocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` enforcing `limits`.

    Args:
        limits: What the listener allows.
        listener: Its name in log lines (e.g. ``"rest"``).
    """

    class ListenerProtocol(GuardedHttpToolsProtocol):
        pass

    ListenerProtocol.limits = limits
    ListenerProtocol.events = _ThrottledLog(listener)
    return ListenerProtocol


__all__ = [
    "DEFAULT_BODY_TIMEOUT",
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_HEADER_BYTES",
    "GuardedHttpToolsProtocol",
    "ListenerLimits",
    "protocol_class",
]
