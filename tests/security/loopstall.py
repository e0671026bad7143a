"""How long one call held a server's event loop, read from the heartbeat
histograms it exports (:mod:`servekit_protocol.loop_heartbeat`): the longest
CPU stretch (``<service>_event_loop_busy_seconds``) and the longest lag
(``..._lag_seconds``) between two readings of ``/metrics``, and the assertion
the attack tests make on them (see :mod:`tests.security.test_loop_stalls`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from servekit_protocol.loop_heartbeat import STALL_BUCKETS

from tests.security.figures import record
from tests.security.wakeups import latest_wakeup

STALL_LIMIT = 0.05
"""The longest CPU stretch a large call may hold the loop for (issue 22: "never
stalls the event loop (> 50 ms) on a large body"); a bucket bound of the
histograms."""

LAG_FLOOR = 0.15
"""Lag any bounded call may cause (seconds), however quiet the machine. With
their copies in threads (segments) the bounded families lagged 15-100 ms beside
probes waking 17-98 ms late, and once 1,000 ms beside a probe that woke 1,001 ms
late (load 7-17, two CPU hogs running); through the workers' pipe, as before
segments, the typed and BYTES ModelInfer and the REST body lagged 250-1,000 ms
beside probes waking 39-167 ms late."""
LAG_FACTOR = 2.0
"""Lag allowed per second of a probe's latest wake-up beside the call, above
the floor: the loop, woken by its timer like the probe, waits for a core about
as long (measured up to 1.4 times the probe's wait above 30 ms), and its own
server's workers compete for the same two cores."""
SETTLE_SECONDS = 0.3
"""Wait after an answer before the metrics are read: the server may still be
freeing the call's buffers, and a stretch is recorded at the next beat."""


@dataclass(frozen=True)
class Histogram:
    """Cumulative counts of one histogram by upper bound (``+Inf`` last)."""

    counts: dict[float, float]

    def above(self, bound: float) -> float:
        """Observations over ``bound`` (a bucket bound)."""
        return self.counts[float("inf")] - self.counts[bound]


def read_histograms(url: str, name: str) -> tuple[Histogram, Histogram]:
    """The busy and lag histograms ``name`` (``modelserver`` or ``gateway``)
    exports at ``url``."""
    text = httpx.get(url, timeout=30).text
    found: dict[str, dict[float, float]] = {"busy": {}, "lag": {}}
    for line in text.splitlines():
        for kind, counts in found.items():
            prefix = f'{name}_event_loop_{kind}_seconds_bucket{{le="'
            if line.startswith(prefix):
                bound, _, value = line[len(prefix) :].partition('"} ')
                counts[float(bound)] = float(value)
    assert found["busy"] and found["lag"], f"no event loop histograms at {url}"
    return Histogram(found["busy"]), Histogram(found["lag"])


def longest(before: Histogram, after: Histogram) -> float:
    """The smallest bucket bound no new observation is above: the longest
    stretch between the two readings is at most that."""
    for bound in sorted(after.counts):
        if after.above(bound) == before.above(bound):
            return bound
    return float("inf")


def stretches_of(url: str, name: str, call: Callable[[], None]) -> tuple[float, float]:
    """(longest busy stretch, longest lag) of the server at ``url`` while
    ``call`` runs, as bucket bounds."""
    busy, lag = read_histograms(url, name)
    call()
    time.sleep(SETTLE_SECONDS)
    busy_after, lag_after = read_histograms(url, name)
    return longest(busy, busy_after), longest(lag, lag_after)


def assert_no_stall(
    url: str,
    name: str,
    family: str,
    call: Callable[[], None],
    *,
    bound_lag: bool = False,
    lag_floor: float = LAG_FLOOR,
) -> None:
    """Record the call's stretches and assert none was busy over the limit;
    with ``bound_lag``, that the loop's lag stayed under :func:`lag_limit` too
    (for calls whose copies run in other threads of the server, where a
    regression shows as lag and not as busy time), with ``lag_floor`` in
    place of :data:`LAG_FLOOR` for a call whose other work lags more."""
    with latest_wakeup() as machine:
        busy, lag = stretches_of(url, name, call)
    record(f"{family}: longest event loop CPU stretch s (at most)", busy)
    record(f"{family}: longest event loop lag s (at most)", lag)
    record(f"{family}: latest wake-up of a probe beside it s", machine())
    assert busy <= STALL_LIMIT, (
        f"{family}: the event loop was busy for over {STALL_LIMIT * 1e3:.0f} ms "
        f"at a stretch (up to {busy * 1e3:.0f} ms; lag up to {lag * 1e3:.0f} ms)"
    )
    if bound_lag:
        limit = lag_limit(machine(), lag_floor)
        assert bucket_below(lag) < limit, (
            f"{family}: the event loop ran over {bucket_below(lag) * 1e3:.0f} ms "
            f"and up to {lag * 1e3:.0f} ms late (limit {limit * 1e3:.0f} ms; a "
            f"probe beside it woke up to {machine() * 1e3:.0f} ms late; busy up "
            f"to {busy * 1e3:.0f} ms)"
        )


def bucket_below(bound: float) -> float:
    """The bucket bound under ``bound``: a stretch recorded in the bucket up to
    ``bound`` was longer than this, and may have been no longer. The lag is
    known only to its bucket, and the buckets are coarse above 50 ms (0.15,
    0.25, 0.5 s), so a limit counts as passed unless the whole bucket lies
    above it. Compared with the bucket's top instead, a lag somewhere in
    150-250 ms failed a 249 ms limit (a probe 125 ms late, load 11-16). While
    the limit is itself a bucket bound (the 150 ms floor) both comparisons
    agree; above it, the limit moves with the probe."""
    return max((edge for edge in STALL_BUCKETS if edge < bound), default=0.0)


def lag_limit(machine: float, floor: float = LAG_FLOOR) -> float:
    """How late the loop may run during a large call, given how late a probe
    process beside it woke (:mod:`tests.security.wakeups`): LAG_FACTOR times
    that, and never under ``floor``."""
    return max(floor, LAG_FACTOR * machine)
