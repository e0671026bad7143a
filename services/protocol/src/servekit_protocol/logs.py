"""The JSON log line both services write, and the request context it carries.

Each record becomes one JSON object on one line: `time`, `level`, `logger`,
`message`, the request context (`request_id`, `model`, `version`, `protocol`)
when one is bound, any `extra=` fields, and `exception` when there is a
traceback. The request context lives in ContextVars: uvicorn and grpc.aio run
each request in its own task, so one request's context never shows up in
another's lines.

The request id travels as `x-request-id` (HTTP header and gRPC metadata, in and
out, between client, gateway and model server): a caller's id is kept when it
is short printable ASCII, and generated otherwise.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
from collections.abc import Iterable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TextIO

import orjson

REQUEST_ID_HEADER = "x-request-id"
"""HTTP header and gRPC metadata key of the request id, in both directions."""

MAX_REQUEST_ID_LENGTH = 128
"""Longer (or non-printable) caller ids are replaced, so lines stay short."""

CONTEXT_FIELDS = ("request_id", "model", "version", "protocol")
"""The request context's fields, in the order a line shows them."""

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
model_var: ContextVar[str | None] = ContextVar("model", default=None)
version_var: ContextVar[int | None] = ContextVar("version", default=None)
protocol_var: ContextVar[str | None] = ContextVar("protocol", default=None)

_VARS: tuple[tuple[str, ContextVar[str | None] | ContextVar[int | None]], ...] = (
    ("request_id", request_id_var),
    ("model", model_var),
    ("version", version_var),
    ("protocol", protocol_var),
)

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", *CONTEXT_FIELDS}
    # uvicorn's terminal-coloured duplicate of the message.
    | {"color_message"}
)

# A random per-process prefix and a counter: unique ids without a system call
# per request (the ids correlate log lines; they are not secrets).
_ID_PREFIX = os.urandom(8).hex()
_id_counter = itertools.count(1)


def new_request_id() -> str:
    """A fresh request id: 32 hex digits, unique across processes."""
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


def accept_request_id(incoming: str | bytes | None) -> str:
    """The caller's id when it is printable ASCII of at most
    `MAX_REQUEST_ID_LENGTH` characters, else a fresh one."""
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
    """Bind a new request context to the current task (no model yet)."""
    request_id_var.set(request_id)
    protocol_var.set(protocol)
    model_var.set(None)
    version_var.set(None)


def incoming_request_id(
    metadata: Iterable[tuple[str, str | bytes]] | None,
) -> str | None:
    """The caller's ``x-request-id`` in gRPC metadata (the first, as the
    handlers read it), if any."""
    for key, value in metadata or ():
        if key == REQUEST_ID_HEADER:
            return value if isinstance(value, str) else value.decode("latin-1")
    return None


def bind_request_id(incoming: str | bytes | None, protocol: str) -> str:
    """`accept_request_id` then `bind_request`; returns the id."""
    request_id = accept_request_id(incoming)
    bind_request(request_id, protocol)
    return request_id


def bind_model(name: str | None, version: int | str | None = None) -> None:
    """Add the model (and its version, when known) to the request context; a
    version given as its decimal text is logged as the number."""
    if isinstance(version, str):
        version = int(version) if version.isdigit() else None
    model_var.set(name or None)
    version_var.set(version)


def context_fields() -> dict[str, str | int]:
    """The bound request context, without unset fields."""
    fields: dict[str, str | int] = {}
    for name, var in _VARS:
        value = var.get()
        if value is not None:
            fields[name] = value
    return fields


class RequestContextFilter(logging.Filter):
    """Copies the bound request context onto each record passing a handler (for
    handlers that format later or elsewhere)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _VARS:
            setattr(record, name, var.get())
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
        for name, var in _VARS:
            value = getattr(record, name, None)
            if value is None:
                value = var.get()
            if value is not None:
                entry[name] = value
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str | int = "INFO", stream: TextIO | None = None) -> None:
    """Send every logger's records to `stream` (stderr) as JSON lines.

    Replaces the root logger's handlers, so libraries that log through `logging`
    (uvicorn, grpc, absl) are formatted the same way; warnings go through the
    `py.warnings` logger, so they are JSON lines too.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestContextFilter())
    # Caller lookup walks the stack on every record; the lines do not show it.
    logging._srcfile = None
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())
    logging.captureWarnings(True)
    # uvicorn installs its own handlers unless told otherwise; its loggers
    # propagate to ours instead, so its lines are JSON too.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        library_logger = logging.getLogger(name)
        library_logger.handlers.clear()
        library_logger.propagate = True
