"""The gateway's access log, in the JSON line shape of `servekit_protocol.logs`.

Every other line, and the request context (request id, model, version,
protocol), come from the wire contract's `servekit_protocol.logs`, shared with
the model server; this module adds the access line, written without `logging`,
and the gateway's choice to replace uvicorn's access line with it.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import BinaryIO, TextIO

import orjson
from servekit_protocol import logs


class _Clock:
    """ISO timestamps with milliseconds; the seconds part is formatted once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def now(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((now - second) * 1000):03d}+00:00"


class AccessLog:
    """One JSON line per request, in the same shape as the other log lines.

    It writes directly instead of going through `logging`, whose record, filter
    and handler machinery costs several times more than the line itself. Lines
    written inside a running event loop are buffered and flushed together at most
    `flush_seconds` later (or once `max_buffered_bytes` pile up), as nginx's
    `access_log ... buffer= flush=` does: one write system call per line was a
    fifth of the gateway's CPU per request under load.
    """

    def __init__(
        self,
        stream: BinaryIO | None,
        enabled: bool = True,
        flush_seconds: float = 0.05,
        max_buffered_bytes: int = 64 * 1024,
    ) -> None:
        if stream is None:
            stream = sys.stderr.buffer
        self._stream = stream
        self.enabled = enabled
        self._clock = _Clock()
        self._flush_seconds = flush_seconds
        self._max_buffered_bytes = max_buffered_bytes
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._flush_handle: asyncio.TimerHandle | None = None

    def write(self, message: str, **fields: object) -> None:
        entry: dict[str, object] = {
            "time": self._clock.now(),
            "level": "INFO",
            "logger": "gateway.access",
            "message": message,
        }
        entry.update(logs.context_fields())
        entry.update(fields)
        line = orjson.dumps(entry, default=str) + b"\n"
        self._pending.append(line)
        self._pending_bytes += len(line)
        if self._pending_bytes >= self._max_buffered_bytes:
            self.flush()
        elif self._flush_handle is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._flush_handle = loop.call_later(self._flush_seconds, self.flush)

    def flush(self) -> None:
        """Write every buffered line now (also called at shutdown)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        self._stream.write(data)
        self._stream.flush()


def configure_logging(level: str, stream: TextIO | None = None) -> None:
    """Send every log line (uvicorn's and grpc's included) as JSON to stderr."""
    logs.configure_logging(level, stream if stream is not None else sys.stderr)
    # The gateway writes its own access line with the request id; uvicorn's would
    # duplicate it without one.
    logging.getLogger("uvicorn.access").disabled = True
