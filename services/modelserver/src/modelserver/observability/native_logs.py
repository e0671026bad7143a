"""Native libraries' stderr (TensorFlow's C++ logging, gRPC core) as JSON lines.

TensorFlow and gRPC write their own lines straight to file descriptor 2 in
glog's format (``W0000 00:00:1795527737.024594 19685 rendezvous.cc:412] text``):
notices on every start, and a warning for each request whose op fails. The
server's log is one JSON object per line, so :func:`capture` turns descriptor 2
into a pipe. A thread reads it and logs each line through the ``native`` logger,
at the level of glog's first letter (continuation lines keep the level of the
line they continue); Python's own ``sys.stderr``, and with it the JSON handler,
moves to a duplicate of the original descriptor.

A fatal native error aborts the process, possibly before the thread has read
its last lines, so :mod:`faulthandler` is pointed at the original descriptor: a
crash still leaves its Python traceback there. A normal exit drains the pipe
(:meth:`NativeStderr.close`). The ``json_native_logs`` setting turns the capture
off.
"""

from __future__ import annotations

import faulthandler
import io
import logging
import os
import re
import sys
import threading
from typing import TextIO

LOGGER_NAME = "native"
_GLOG_LINE = re.compile(
    r"(?P<level>[IWEF])\d{4} [\d:.]+\s+\d+ (?P<source>[^\]\s]+)\] (?P<message>.*)"
)
_LEVELS = {
    "I": logging.INFO,
    "W": logging.WARNING,
    "E": logging.ERROR,
    "F": logging.CRITICAL,
}


def parse_line(line: str, previous_level: int) -> tuple[int, str, str | None]:
    """``(level, message, source file)`` of one native stderr line.

    A line not in glog's format (a continuation, absl's preamble) keeps
    ``previous_level`` and has no source.
    """
    match = _GLOG_LINE.fullmatch(line)
    if match is None:
        return previous_level, line, None
    return _LEVELS[match["level"]], match["message"], match["source"]


class NativeStderr:
    """Descriptor 2 redirected into a pipe that a thread turns into log records.

    Args:
        original: A duplicate of the original descriptor 2 (restored on close).
        read_end: The pipe's read end.
        stream: Text stream on ``original``, for Python's own stderr.
    """

    def __init__(self, original: int, read_end: int, stream: TextIO) -> None:
        self._original = original
        self._read_end = read_end
        self.stream = stream
        self._logger = logging.getLogger(LOGGER_NAME)
        self._thread = threading.Thread(
            target=self._forward, name="native_stderr", daemon=True
        )
        self._thread.start()

    def _forward(self) -> None:
        pending = b""
        level = logging.WARNING
        while True:
            try:
                chunk = os.read(self._read_end, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                level = self._log(raw, level)
        if pending:
            self._log(pending, level)
        os.close(self._read_end)

    def _log(self, raw: bytes, level: int) -> int:
        line = raw.decode("utf-8", errors="replace").rstrip("\r")
        if not line.strip():
            return level
        level, message, source = parse_line(line, level)
        extra = {"source": source} if source is not None else None
        self._logger.log(level, "%s", message, extra=extra)
        return level

    def close(self, timeout: float = 2.0) -> None:
        """Put descriptor 2 back and log what is still in the pipe."""
        # Once descriptor 2 is the original again, no writer holds the pipe open
        # and the thread reads to its end.
        os.dup2(self._original, 2)
        os.close(self._original)
        self._thread.join(timeout)


def capture() -> NativeStderr:
    """Redirect descriptor 2 into the ``native`` logger (see the module docstring).

    Returns:
        The capture; its ``stream`` is where JSON lines must be written.
    """
    sys.stderr.flush()
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    stream = io.TextIOWrapper(
        io.FileIO(os.dup(original), "w"), encoding="utf-8", line_buffering=True
    )
    sys.stderr = stream
    faulthandler.enable(file=stream)
    return NativeStderr(original, read_end, stream)
