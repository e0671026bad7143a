"""A heartbeat on the event loop that measures how long the loop was held.

Both services serve every connection from one event loop, so any callback that
runs long (a parse, a copy, a large free) holds up every other client for that
long. :class:`LoopHeartbeat` schedules itself every ``interval`` seconds with
``call_later`` and, at each beat, hands its observer two figures about the
stretch since the previous beat:

- **busy**: the CPU time the loop's thread spent (``time.thread_time``, read on
  that thread). A callback that holds the loop for *x* seconds of CPU shows as
  a stretch of at least *x*; an idle loop shows next to nothing, a loop that is
  merely kept busy by many short callbacks about ``interval``. Time the
  scheduler gave to other processes is not in it, so on loaded cores it still
  measures what the server itself did.
- **lag**: how much later than due the beat ran (wall clock). It adds the time
  the thread waited for a core, or for the GIL held by another thread, so it
  is what a client saw, noise included.

The cost is one timer callback per beat: two clock reads and the observer
(about 100 a second at the default 10 ms).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

DEFAULT_INTERVAL_MS = 10.0
"""Time between beats: short against the 50 ms a stall must stay under, long
enough for the beats to cost nothing measurable."""

STALL_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.015,
    0.02,
    0.025,
    0.035,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
"""Histogram buckets of both figures (seconds): fine around the 50 ms bound,
coarse above it."""

Observer = Callable[[float, float], None]
"""Called at each beat with (busy CPU seconds, lag seconds) of the stretch
since the previous beat."""


class LoopHeartbeat:
    """Beats on the running loop from :meth:`start` until :meth:`stop`."""

    def __init__(self, interval: float, observe: Observer) -> None:
        """Beat every ``interval`` seconds (> 0); ``observe`` receives each
        stretch's figures, on the loop's thread."""
        if interval <= 0:
            raise ValueError("the heartbeat's interval must be positive")
        self._interval = interval
        self._observe = observe
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cpu = 0.0
        self._wall = 0.0

    def start(self) -> None:
        """Start beating on the running loop (call from a coroutine)."""
        if self._handle is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._cpu = time.thread_time()
        self._wall = time.monotonic()
        self._handle = self._loop.call_later(self._interval, self._beat)

    def stop(self) -> None:
        """Stop beating; the stretch in progress is not observed."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _beat(self) -> None:
        cpu = time.thread_time()
        wall = time.monotonic()
        busy = cpu - self._cpu
        lag = max(0.0, wall - self._wall - self._interval)
        self._cpu = cpu
        self._wall = wall
        assert self._loop is not None
        self._handle = self._loop.call_later(self._interval, self._beat)
        self._observe(busy, lag)
