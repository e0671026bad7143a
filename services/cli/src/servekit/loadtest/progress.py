"""The live progress line: elapsed, users, req/s, p99 and errors while Locust runs.

Read from the files the run is writing: the per-request log (float latencies, read
incrementally) and Locust's CSV stats history (the user count). Both are flushed
about once a second by the locustfile.
"""

from __future__ import annotations

import collections
import csv
import io
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

WINDOW_SECONDS = 10.0
"""Latency percentiles and throughput are over the last ten seconds, like Locust's."""
PLAIN_INTERVAL_SECONDS = 5.0
"""Without a terminal, a line every five seconds instead of one redrawn line."""


@dataclass(frozen=True)
class Progress:
    """The state of a run at one moment."""

    elapsed: float
    users: int
    rps: float
    p99_ms: float
    requests: int
    failures: int

    def line(self, duration_seconds: int) -> str:
        """The progress line people read."""
        if self.requests == 0:
            return f"waiting for the first answer (Locust starting, {self.users} users)"
        p99 = "-" if math.isnan(self.p99_ms) else f"{self.p99_ms:.2f} ms"
        error_rate = self.failures / self.requests * 100 if self.requests else 0.0
        return (
            f"{self.elapsed:5.0f}s/{duration_seconds}s  users {self.users:>3}  "
            f"req/s {self.rps:8.1f}  p99 {p99:>10}  "
            f"errors {self.failures} ({error_rate:.2f}%)  requests {self.requests}"
        )


class ProgressTracker:
    """Follows the request log and stats history as they grow."""

    def __init__(self, request_log: Path, stats_history: Path) -> None:
        self._request_log = request_log
        self._stats_history = stats_history
        self._offset = 0
        self._header_seen = False
        self._recent: collections.deque[tuple[float, float]] = collections.deque()
        self._requests = 0
        self._failures = 0
        self._users = 0
        self._first_start: float | None = None

    def _read_new_requests(self) -> None:
        try:
            with self._request_log.open("rb") as handle:
                handle.seek(self._offset)
                chunk = handle.read()
        except FileNotFoundError:
            return
        # Only whole lines: the writer may be in the middle of one.
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._offset += len(complete)
        rows = csv.reader(io.StringIO(complete.decode("utf-8", errors="replace")))
        for row in rows:
            if not self._header_seen:
                self._header_seen = True
                continue
            try:
                start, latency_ms, success = float(row[0]), float(row[1]), row[5]
            except (IndexError, ValueError):
                continue
            self._requests += 1
            if self._first_start is None or start < self._first_start:
                self._first_start = start
            if success != "1":
                self._failures += 1
            self._recent.append((start + latency_ms / 1000, latency_ms))

    def _read_users(self) -> None:
        try:
            text = self._stats_history.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return
        for line in reversed(text.splitlines()):
            fields = next(csv.reader([line]), [])
            if len(fields) > 3 and fields[3] == "Aggregated":
                try:
                    self._users = int(fields[1])
                except ValueError:
                    continue
                return

    def poll(self) -> Progress:
        """Read what was written since the last poll."""
        now = time.time()
        self._read_new_requests()
        self._read_users()
        while self._recent and self._recent[0][0] < now - WINDOW_SECONDS:
            self._recent.popleft()
        # The clock starts with the first request, not with Locust's start-up.
        elapsed = 0.0 if self._first_start is None else now - self._first_start
        window = min(WINDOW_SECONDS, max(elapsed, 1.0))
        latencies = sorted(latency for _, latency in self._recent)
        p99 = latencies[math.ceil(0.99 * len(latencies)) - 1] if latencies else math.nan
        return Progress(
            elapsed=elapsed,
            users=self._users,
            rps=len(latencies) / window,
            p99_ms=p99,
            requests=self._requests,
            failures=self._failures,
        )


class ProgressPrinter:
    """Redraws one line on a terminal; prints a line now and then otherwise."""

    def __init__(self, duration_seconds: int, stream: TextIO | None = None) -> None:
        self._duration = duration_seconds
        self._stream = stream if stream is not None else sys.stderr
        self._live = self._stream.isatty()
        self._last_plain = 0.0
        self._width = 0

    def show(self, progress: Progress) -> None:
        line = progress.line(self._duration)
        if self._live:
            self._stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
            self._stream.flush()
        elif time.monotonic() - self._last_plain >= PLAIN_INTERVAL_SECONDS:
            self._stream.write(line + "\n")
            self._stream.flush()
            self._last_plain = time.monotonic()

    def finish(self, progress: Progress) -> None:
        """Leave the final state on its own line."""
        line = progress.line(self._duration)
        if self._live:
            self._stream.write("\r" + line.ljust(self._width) + "\n")
        else:
            self._stream.write(line + "\n")
        self._stream.flush()
