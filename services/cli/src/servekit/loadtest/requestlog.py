"""The per-request latency log: one CSV line per request, written by the locustfile.

Locust's own statistics round response times to whole milliseconds and keep
percentiles only as aggregates; a model answering in 0.4 ms would show as 0 ms.
The summary, the plots and the SLO verdict are computed from this log instead,
with the float milliseconds Locust measured for each request.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import TextIO

REQUEST_LOG_COLUMNS = (
    "start",  # Unix time the request started, seconds
    "response_time_ms",  # as measured by Locust, float milliseconds
    "request_type",  # POST, grpc
    "name",  # Locust's request name (the statistics row)
    "response_length",  # bytes
    "success",  # 1 or 0
    "error",  # short description of the failure, empty on success
)
MAX_ERROR_LENGTH = 200
FLUSH_INTERVAL_SECONDS = 1.0


class RequestLogWriter:
    """Appends request lines to a CSV file, flushing about once a second.

    A reader polls the file while the test runs (the live progress line), so lines
    must reach the disk soon, but a flush per request would cost a system call each.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle: TextIO = path.open("w", encoding="utf-8", newline="")
        self._writer = csv.writer(self._handle)
        self._writer.writerow(REQUEST_LOG_COLUMNS)
        self._handle.flush()
        self._last_flush = time.monotonic()

    def record(
        self,
        *,
        start: float,
        response_time_ms: float,
        request_type: str,
        name: str,
        response_length: int,
        error: str | None,
    ) -> None:
        """Write one request's line."""
        self._writer.writerow(
            (
                f"{start:.6f}",
                f"{response_time_ms:.4f}",
                request_type,
                name,
                response_length,
                0 if error is not None else 1,
                "" if error is None else error.replace("\n", " ")[:MAX_ERROR_LENGTH],
            )
        )
        now = time.monotonic()
        if now - self._last_flush >= FLUSH_INTERVAL_SECONDS:
            self._handle.flush()
            self._last_flush = now

    def close(self) -> None:
        """Flush and close the file."""
        if not self._handle.closed:
            self._handle.flush()
            self._handle.close()
