"""Which unbatched model calls run on the event loop instead of a pool thread.

Handing a call to the inference pool and back wakes a thread, moves the GIL
twice and wakes the event loop again. For a compiled model whose call takes tens
of microseconds that round trip costs more than the call itself, and with the
server on one core (as in the benchmarks) the thread buys no parallelism either.
So a call runs on the event loop once its signature has proven short; every other
call, and every call until then, runs in the pool.

How it is decided, per runtime and signature: every call is timed where it runs.
After :data:`PROVEN_CALLS` calls in a row that each took at most the limit
(``inline_inference_micros``), a call with no more rows than the largest of them
runs inline. One call over the limit, wherever it ran, starts the count again, so
the next :data:`PROVEN_CALLS` calls go to the pool: the loop is held past the
limit by one call at most before a signature whose cost changed (a slower code
path, a loaded machine) is back in the pool. A larger input than any proven is
refused by the row rule; calls without a row count, and calls whose deadline has
passed, always go to the pool (which answers them as before).

What a call is timed by: its wall time, unless it took longer than the limit
without ever waiting. On a loaded machine other processes take the core from a
call mid-way; that time is not the call's, and counting it sent a 60 µs call
back to the pool, two thread hops a call, for the next 16 calls each time. So a
call over the limit counts its thread's CPU time instead when the thread made no
voluntary context switch during it (I/O, a lock, the GIL and a sleep all are one):
only being preempted stretched it. A call that waited at all keeps its wall time,
so one that blocks is never proven short. Without per-thread usage (not Linux),
wall time only.
"""

from __future__ import annotations

import resource
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from modelserver.runtimes.base import PreparedCall, Runtime
    from modelserver.types import Tensor

PROVEN_CALLS = 16
"""Consecutive calls within the limit before a signature's calls run inline."""

_RUSAGE_THREAD: int | None = getattr(resource, "RUSAGE_THREAD", None)


class ThreadUsage(NamedTuple):
    """The calling thread's CPU seconds and voluntary context switches so far."""

    cpu_seconds: float
    waits: int


def thread_usage() -> ThreadUsage | None:
    """The calling thread's usage; None where the system has no per-thread usage."""
    if _RUSAGE_THREAD is None:
        return None
    waits = resource.getrusage(_RUSAGE_THREAD).ru_nvcsw
    # Not getrusage's CPU times: they advance only when the scheduler accounts
    # the thread (a tick, a switch), so a call shorter than a tick often reads
    # no CPU at all and would pass for short. The thread's CPU clock includes
    # the slice it is running.
    return ThreadUsage(time.thread_time(), waits)


def counted_seconds(
    wall_seconds: float, before: ThreadUsage | None, after: ThreadUsage | None
) -> float:
    """How long a call counts as having taken: its wall time, or its thread's CPU
    time when the thread never waited during the call (preemption alone made the
    wall time longer)."""
    if before is None or after is None or after.waits != before.waits:
        return wall_seconds
    return min(wall_seconds, after.cpu_seconds - before.cpu_seconds)


class _Record:
    """One signature's recent calls: how many in a row were short, and the
    largest row count among them."""

    __slots__ = ("rows", "streak")

    def __init__(self) -> None:
        self.streak = 0
        self.rows = 0


class InlinePolicy:
    """Decides, per runtime and signature, whether a call may skip the pool.

    Args:
        limit_seconds: The longest a call may take to count as short; 0 turns
            inline calls off.
    """

    def __init__(self, limit_seconds: float) -> None:
        self._limit = limit_seconds
        # Keyed by the runtime object, so an unloaded version's records go with it.
        self._records: weakref.WeakKeyDictionary[Runtime, dict[str, _Record]] = (
            weakref.WeakKeyDictionary()
        )

    def _record(self, runtime: Runtime, signature: str) -> _Record:
        by_signature = self._records.get(runtime)
        if by_signature is None:
            by_signature = self._records[runtime] = {}
        record = by_signature.get(signature)
        if record is None:
            record = by_signature[signature] = _Record()
        return record

    def inline(
        self, runtime: Runtime, call: PreparedCall, timeout: float | None
    ) -> bool:
        """Whether this call may run on the event loop."""
        rows = call.batch_size
        if self._limit <= 0 or rows is None or (timeout is not None and timeout <= 0):
            return False
        record = self._record(runtime, call.signature_name)
        return record.streak >= PROVEN_CALLS and rows <= record.rows

    def observe(
        self, runtime: Runtime, signature: str, rows: int | None, seconds: float
    ) -> None:
        """Record how long a call took; calls without a row count (never inline)
        are not recorded. Safe from a pool thread: a lost update under a race
        only moves the decision by a call."""
        if self._limit <= 0 or rows is None:
            return
        record = self._record(runtime, signature)
        if seconds > self._limit:
            record.streak = 0
            record.rows = 0
            return
        record.streak += 1
        if rows > record.rows:
            record.rows = rows

    def timed_run(
        self, runtime: Runtime, call: PreparedCall
    ) -> Callable[[PreparedCall], dict[str, Tensor]]:
        """``runtime.run``, recording its duration here (also when it raises)."""
        signature, rows = call.signature_name, call.batch_size
        limit = self._limit

        def run(argument: PreparedCall) -> dict[str, Tensor]:
            # The usage is read again only for a call over the limit (rare).
            usage = thread_usage() if limit > 0 else None
            started = time.perf_counter()
            try:
                return runtime.run(argument)
            finally:
                seconds = time.perf_counter() - started
                if seconds > limit:
                    seconds = counted_seconds(seconds, usage, thread_usage())
                self.observe(runtime, signature, rows, seconds)

        return run
