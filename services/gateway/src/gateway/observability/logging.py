"""JSON-line logs carrying the request id, model, version and protocol.

The context lives in ContextVars: uvicorn and grpc.aio run each request in its own
task, so values bound for one request never show up in another's lines.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, BinaryIO, TextIO

import orjson

REQUEST_ID_HEADER = "x-request-id"
"""HTTP header and gRPC metadata key of the request id, in and out."""

MAX_REQUEST_ID_LENGTH = 128

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
model_var: ContextVar[str | None] = ContextVar("model", default=None)
version_var: ContextVar[str | None] = ContextVar("version", default=None)
protocol_var: ContextVar[str | None] = ContextVar("protocol", default=None)

_CONTEXT_FIELDS = ("request_id", "model", "version", "protocol")
_STANDARD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    # uvicorn adds an ANSI-coloured duplicate of its message.
    | {"message", "asctime", "color_message", *_CONTEXT_FIELDS}
)


def new_request_id() -> str:
    """A fresh random id (32 hex digits)."""
    return os.urandom(16).hex()


def accept_request_id(incoming: str | bytes | None) -> str:
    """Keep the caller's id when it is short printable ASCII, else generate one."""
    if isinstance(incoming, bytes):
        incoming = incoming.decode("latin-1")
    if (
        incoming
        and len(incoming) <= MAX_REQUEST_ID_LENGTH
        and incoming.isascii()
        and incoming.isprintable()
    ):
        return incoming
    return new_request_id()


def bind_request(request_id: str, protocol: str) -> None:
    """Bind the request context of the current task."""
    request_id_var.set(request_id)
    protocol_var.set(protocol)
    model_var.set(None)
    version_var.set(None)


def bind_model(name: str, version: str | None = None) -> None:
    model_var.set(name)
    version_var.set(version)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, context, extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, var in (
            ("request_id", request_id_var),
            ("model", model_var),
            ("version", version_var),
            ("protocol", protocol_var),
        ):
            value = var.get()
            if value is not None:
                entry[name] = value
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


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
        for name, var in (
            ("request_id", request_id_var),
            ("model", model_var),
            ("version", version_var),
            ("protocol", protocol_var),
        ):
            value = var.get()
            if value:
                entry[name] = value
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
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    # Caller lookup walks the stack on every record; the lines do not show it.
    logging._srcfile = None
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # The gateway writes its own access line with the request id; uvicorn's would
    # duplicate it without one.
    logging.getLogger("uvicorn.access").disabled = True
