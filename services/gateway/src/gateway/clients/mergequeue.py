"""The callers of one coalescing key waiting for a backend call, and what one
merged call may hold.

A merged call is one request to the backend, so it is held to the limits the
backend holds every request to: ``--max-request-tensor-elements`` and
``--max-request-tensor-bytes`` (`servekit_protocol.tensor_limits`, the limits
each caller was checked against alone; `clients.batchkeys` counts each caller's
share as the backend will), and to the key's row limit. Waiting callers join the
next call in their order while all three hold; the first that would pass one
starts the call after it. Bytes alone are not enough: at the default limits a
float64 tensor reaches both at once, but a merge of one-byte values (uint8, int8,
bool) reaches the element limit at an eighth of the byte limit, and the backend
refused such merges as INVALID_ARGUMENT.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from gateway.clients.backend import Metadata
from gateway.clients.batchkeys import Key
from gateway.clients.strategies import Strategy


@dataclass(frozen=True, slots=True)
class Budget:
    """What one merged call may hold besides its rows: the backend's request
    limits.

    Attributes:
        max_elements: Elements of all its tensors.
        max_bytes: Bytes of all its tensors once decoded.
    """

    max_elements: int
    max_bytes: int


@dataclass(slots=True)
class Waiter:
    """One caller waiting for a merged call, with its share of the budget."""

    request: Any
    rows: int
    nbytes: int
    elements: int
    deadline: float
    metadata: Metadata
    future: asyncio.Future[Any]
    keep_from: int | None = None


@dataclass(slots=True)
class Group:
    """The calls of one key: how many are in flight, who waits, how many rows.

    Kept while busy, while callers it answered may come back, or while it
    remembers a lowered row limit, so keys seen once do not accumulate."""

    key: Key
    strategy: Strategy[Any, Any]
    addresses: tuple[str, ...]
    max_rows: int
    in_flight: int = 0
    waiting: deque[Waiter] = field(default_factory=deque)
    waiting_rows: int = 0
    waiting_bytes: int = 0
    waiting_elements: int = 0
    returning: int = 0
    """Callers answered by recent calls that have not sent again."""
    returning_until: float = 0.0
    """When to stop expecting them (monotonic seconds)."""
    call_seconds: float = 0.0
    """Recent wall time of one backend call (exponential average)."""
    hold: asyncio.TimerHandle | None = None

    def append(self, waiter: Waiter) -> None:
        """A caller joins the queue."""
        self.waiting.append(waiter)
        self.waiting_rows += waiter.rows
        self.waiting_bytes += waiter.nbytes
        self.waiting_elements += waiter.elements

    def popleft(self) -> Waiter:
        """The first waiter leaves the queue (sent, or gone)."""
        waiter = self.waiting.popleft()
        self.waiting_rows -= waiter.rows
        self.waiting_bytes -= waiter.nbytes
        self.waiting_elements -= waiter.elements
        return waiter

    def fills_a_call(self, budget: Budget) -> bool:
        """Whether the waiting callers hold a call's worth of rows, bytes or
        elements (then nobody else is worth waiting for)."""
        return (
            self.waiting_rows >= self.max_rows
            or self.waiting_bytes >= budget.max_bytes
            or self.waiting_elements >= budget.max_elements
        )

    def next_call(self, budget: Budget) -> list[Waiter]:
        """The callers of the next call, taken from the queue in their order
        while the rows and ``budget`` hold (the first one always: a caller alone
        was checked against the limits before); callers that gave up are
        dropped on the way."""
        batch: list[Waiter] = []
        rows = 0
        nbytes = 0
        elements = 0
        while self.waiting:
            waiter = self.waiting[0]
            if waiter.future.done():  # gave up (deadline or disconnect)
                self.popleft()
                continue
            if batch and (
                rows + waiter.rows > self.max_rows
                or nbytes + waiter.nbytes > budget.max_bytes
                or elements + waiter.elements > budget.max_elements
            ):
                break
            batch.append(self.popleft())
            rows += waiter.rows
            nbytes += waiter.nbytes
            elements += waiter.elements
        return batch

    def arrived(self, now: float) -> None:
        """A request came: one answered caller fewer to expect."""
        if now >= self.returning_until:
            self.returning = 0
        elif self.returning:
            self.returning -= 1

    def answered(self, callers: int, started: float) -> None:
        """A call that served `callers` ended."""
        now = time.monotonic()
        elapsed = now - started
        self.call_seconds = (
            elapsed
            if not self.call_seconds
            else 0.8 * self.call_seconds + 0.2 * elapsed
        )
        self.returning += callers
        self.returning_until = now + self.call_seconds

    def idle(self, now: float) -> bool:
        """Nothing in flight or waiting, and no answered caller expected."""
        return (
            self.in_flight == 0
            and not self.waiting
            and (not self.returning or now >= self.returning_until)
        )
