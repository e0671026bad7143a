"""A circuit breaker per backend: fail fast while a backend is down, probe, recover.

closed --(N consecutive failures)--> open --(reset time)--> half-open
half-open --(probe succeeds)--> closed;  half-open --(probe fails)--> open
While open every call is refused at once; in half-open exactly one call (the probe)
goes through and the others are still refused until it reports.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Counts consecutive failures of one backend; the clock is injectable for tests."""

    def __init__(
        self,
        failure_threshold: int,
        reset_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.reset_seconds = reset_seconds
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False

    @property
    def state(self) -> BreakerState:
        """The state now (an open circuit whose time is up reads as half-open)."""
        if (
            self._state is BreakerState.OPEN
            and self._clock() - self._opened_at >= self.reset_seconds
        ):
            return BreakerState.HALF_OPEN
        return self._state

    def allow(self) -> bool:
        """Whether a call may go to the backend now; a True in half-open is the probe."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN:
            return False
        if self._probe_in_flight:
            return False
        self._state = BreakerState.HALF_OPEN
        self._probe_in_flight = True
        return True

    def retry_after(self) -> float:
        """Seconds until the next probe may go (0 when calls are let through)."""
        if self._state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self.reset_seconds - (self._clock() - self._opened_at))

    def record_success(self) -> None:
        self._failures = 0
        self._probe_in_flight = False
        self._state = BreakerState.CLOSED

    def record_failure(self) -> None:
        self._probe_in_flight = False
        if self._state is BreakerState.HALF_OPEN:
            self._open()
            return
        self._failures += 1
        if self._failures >= self.failure_threshold:
            self._open()

    def record_neutral(self) -> None:
        """A call that says nothing about the backend's health (e.g. a bad request)."""
        if self._state is BreakerState.HALF_OPEN and self._probe_in_flight:
            # The backend answered, so it is reachable again.
            self.record_success()

    def record_cancelled(self) -> None:
        """A call abandoned by its client: if it was the probe, let another one go."""
        self._probe_in_flight = False

    def _open(self) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = self._clock()
        self._failures = 0
