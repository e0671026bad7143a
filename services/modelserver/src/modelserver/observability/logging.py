"""JSON-line logs carrying the request context.

Each record becomes one JSON object on one line (``json.dumps`` of a dict, never a
string template) with ``time``, ``level``, ``logger``, ``message``, the request
context (``request_id``, ``model``, ``version``, ``protocol``) when one is bound,
any ``extra=`` fields, and ``exception`` when there is a traceback.

The request context lives in :class:`contextvars.ContextVar` objects. The REST app
and the gRPC servicer bind them once per request: uvicorn and grpc.aio run every
request in its own task, so one request's context never leaks into another's. The
request id comes from the caller's ``x-request-id`` header or gRPC metadata when it
is sane, is generated otherwise, and is sent back under the same name.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TextIO

REQUEST_ID_HEADER = "x-request-id"
"""HTTP header and gRPC metadata key of the request id (both directions)."""

MAX_REQUEST_ID_LENGTH = 128
"""Longer (or non-printable) caller ids are replaced, so logs stay one short line."""

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
model_var: ContextVar[str | None] = ContextVar("model", default=None)
version_var: ContextVar[int | None] = ContextVar("version", default=None)
protocol_var: ContextVar[str | None] = ContextVar("protocol", default=None)

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_RECORD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "request_id", "model", "version", "protocol"}
    # uvicorn's terminal-coloured duplicate of the message.
    | {"color_message"}
)


# A random per-process prefix and a counter: unique ids without a system call
# per request (the ids are for correlating logs, not secrets).
_ID_PREFIX = os.urandom(8).hex()
_id_counter = itertools.count(1)


def new_request_id() -> str:
    """Return a fresh request id: 32 hex digits, unique across processes."""
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


def bind_request_id(incoming: str | bytes | None, protocol: str) -> str:
    """Bind the request context for the current task and return the request id.

    Args:
        incoming: The caller's ``x-request-id``, if any. It is kept when it is
            printable ASCII of at most :data:`MAX_REQUEST_ID_LENGTH` characters.
        protocol: ``"rest"``, ``"grpc"`` or ``"grpc-web"``.
    """
    if isinstance(incoming, bytes):
        incoming = incoming.decode("latin-1")
    if (
        incoming
        and len(incoming) <= MAX_REQUEST_ID_LENGTH
        and incoming.isascii()
        and incoming.isprintable()
    ):
        request_id = incoming
    else:
        request_id = new_request_id()
    request_id_var.set(request_id)
    protocol_var.set(protocol)
    return request_id


def bind_model(name: str, version: int | None) -> None:
    """Add the model (and version, when known) to the current request context."""
    model_var.set(name)
    version_var.set(version)


class RequestContextFilter(logging.Filter):
    """Copies the bound request context onto each record passing the handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        record.model = model_var.get()
        record.version = version_var.get()
        record.protocol = protocol_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("request_id", "model", "version", "protocol"):
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        for key, value in vars(record).items():
            if key not in _STANDARD_RECORD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(level: str | int = "INFO", stream: TextIO | None = None) -> None:
    """Send every logger's records to ``stream`` (stderr) as JSON lines.

    Replaces the root logger's handlers, so libraries that log through
    :mod:`logging` (uvicorn, grpc, absl) are formatted the same way.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestContextFilter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())
    # Warnings go through the ``py.warnings`` logger, so they are JSON lines too.
    logging.captureWarnings(True)
    # uvicorn installs its own handlers unless told otherwise; make its loggers
    # propagate to ours instead so its lines are JSON too.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        library_logger = logging.getLogger(name)
        library_logger.handlers.clear()
        library_logger.propagate = True
