"""A token bucket per API key: `rate` tokens per second, at most `burst` saved up."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    """Allows `burst` requests at once and `rate` per second on average.

    The clock is injectable so tests need not sleep.
    """

    rate: float
    burst: float
    clock: Callable[[], float] = time.monotonic
    tokens: float = field(init=False)
    updated: float = field(init=False)

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst <= 0:
            raise ValueError("a token bucket needs a positive rate and burst")
        self.tokens = self.burst
        self.updated = self.clock()

    def try_take(self, cost: float = 1.0) -> float:
        """Take `cost` tokens; return 0 on success, else seconds until they exist."""
        now = self.clock()
        elapsed = now - self.updated
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.updated = now
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        return (cost - self.tokens) / self.rate
