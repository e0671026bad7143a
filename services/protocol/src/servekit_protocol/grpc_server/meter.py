"""Flood checks on a connection's incoming bytes, made before ``h2`` reads them.

``h2`` buffers up to 64 CONTINUATION frames and decodes a header block whatever
its compressed size, and answers every PING and SETTINGS it is sent. The meter
reads only the 9-byte frame headers as the bytes arrive, so a block over the
limits, a reset storm or a control-frame flood is refused before ``h2`` holds
or decodes any of it. Framing itself stays ``h2``'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from h2.errors import ErrorCodes

from servekit_protocol.grpc_server.limits import Http2Limits

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_HEADERS, _RST_STREAM, _SETTINGS, _PING, _CONTINUATION = 0x1, 0x3, 0x4, 0x6, 0x9
_END_HEADERS, _ACK = 0x4, 0x1
_FRAME_HEADER = 9


class PeerError(Exception):
    """The client broke a rule: the connection ends with GOAWAY ``code``."""

    def __init__(self, code: ErrorCodes, message: str) -> None:
        super().__init__(message)
        self.code = code


class TokenBucket:
    """``burst`` events at once, refilled at ``rate`` per second."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._stamp = clock()

    def take(self) -> bool:
        """Spend one token; False when none is left."""
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class FrameMeter:
    """Follows frame boundaries in the byte stream and applies the limits."""

    def __init__(self, limits: Http2Limits, resets: TokenBucket) -> None:
        self._limits = limits
        self._resets = resets
        self._preface = 0
        self._head = bytearray()
        self._skip = 0
        self._block_bytes = 0
        self._continuations = 0
        self.block_started: float | None = None
        """When the header block under way began (the header-read timer)."""
        self.control_answers = 0
        """PING and SETTINGS frames that want an answer, seen in the last feed."""
        self.settings_seen = False
        """The client's first SETTINGS (the end of its handshake) has arrived."""

    def feed(self, data: bytes) -> None:
        """Account for ``data``, the next bytes from the client.

        Raises:
            PeerError: A limit was crossed or the preface is wrong.
        """
        self.control_answers = 0
        size = len(data)
        position = 0
        if self._preface < len(PREFACE):
            taken = min(len(PREFACE) - self._preface, size)
            expected = PREFACE[self._preface : self._preface + taken]
            if data[:taken] != expected:
                raise PeerError(ErrorCodes.PROTOCOL_ERROR, "not an HTTP/2 preface")
            self._preface += taken
            position = taken
        head = self._head
        while position < size:
            if self._skip:
                step = min(self._skip, size - position)
                self._skip -= step
                position += step
                continue
            if not head and size - position >= _FRAME_HEADER:
                # A whole frame header in this read: no copy into ``head``.
                length = int.from_bytes(data[position : position + 3], "big")
                self._on_frame(data[position + 3], data[position + 4], length)
                position += _FRAME_HEADER
                self._skip = length
                continue
            wanted = _FRAME_HEADER - len(head)
            head += data[position : position + wanted]
            position += wanted
            if len(head) < _FRAME_HEADER:
                break
            length = int.from_bytes(head[:3], "big")
            self._on_frame(head[3], head[4], length)
            head.clear()
            self._skip = length

    def _on_frame(self, kind: int, flags: int, length: int) -> None:
        if kind == _HEADERS:
            self._block_bytes = 0
            self._continuations = 0
            self._add_block(length)
            self.block_started = None if flags & _END_HEADERS else _now()
        elif kind == _CONTINUATION:
            self._continuations += 1
            if self._continuations > self._limits.max_continuation_frames:
                raise PeerError(
                    ErrorCodes.ENHANCE_YOUR_CALM,
                    f"more than {self._limits.max_continuation_frames} "
                    "CONTINUATION frames in one header block",
                )
            self._add_block(length)
            if flags & _END_HEADERS:
                self.block_started = None
        elif kind == _RST_STREAM:
            self.count_reset()
        elif kind in (_PING, _SETTINGS) and not flags & _ACK:
            self.control_answers += 1
            if kind == _SETTINGS:
                self.settings_seen = True

    def _add_block(self, length: int) -> None:
        self._block_bytes += length
        if self._block_bytes > self._limits.max_header_list_size:
            raise PeerError(
                ErrorCodes.ENHANCE_YOUR_CALM,
                f"a header block over {self._limits.max_header_list_size} bytes",
            )

    def count_reset(self) -> None:
        """One stream reset by the client or refused for its fault.

        Raises:
            PeerError: ENHANCE_YOUR_CALM once the allowance is spent.
        """
        if not self._resets.take():
            raise PeerError(
                ErrorCodes.ENHANCE_YOUR_CALM, "too many stream resets and errors"
            )


def _now() -> float:
    return time.monotonic()
