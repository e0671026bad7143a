"""Pure statistics: percentiles of latencies, medians over rounds, paired ratios."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

NANOS_PER_MILLI = 1_000_000


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100] of already sorted values.

    Nearest rank always returns an observed value, so a p99 over 150 requests is
    the second slowest request rather than an interpolation between two.

    Raises:
        ValueError: No values, or ``q`` outside (0, 100].
    """
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0 < q <= 100:
        raise ValueError(f"percentile {q} outside (0, 100]")
    rank = math.ceil(q / 100 * len(sorted_values))
    return sorted_values[max(rank, 1) - 1]


@dataclass(frozen=True)
class LatencySummary:
    """Latency of the requests in one measured window, in milliseconds."""

    count: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float


def summarize_nanoseconds(latencies_ns: Iterable[int]) -> LatencySummary:
    """Summarise per-request latencies given in nanoseconds.

    Raises:
        ValueError: No latencies.
    """
    ordered = sorted(latencies_ns)
    if not ordered:
        raise ValueError("no latencies to summarise")
    scale = float(NANOS_PER_MILLI)
    return LatencySummary(
        count=len(ordered),
        mean_ms=statistics.fmean(ordered) / scale,
        p50_ms=percentile(ordered, 50) / scale,
        p90_ms=percentile(ordered, 90) / scale,
        p99_ms=percentile(ordered, 99) / scale,
        max_ms=ordered[-1] / scale,
    )


def median(values: Iterable[float]) -> float:
    """Median of the values (the mean of the middle two for an even count).

    Raises:
        ValueError: No values.
    """
    collected = list(values)
    if not collected:
        raise ValueError("median of no values")
    return float(statistics.median(collected))


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``; infinity when only the denominator is zero."""
    if denominator == 0:
        return math.inf if numerator > 0 else math.nan
    return numerator / denominator


def paired_ratio(pairs: Iterable[tuple[float, float]]) -> float:
    """Median over rounds of the per-round ratio ``a / b``.

    Each pair was measured minutes apart at most, so noise from other work on the
    machine mostly hits both sides of one pair: the median of the paired ratios is
    steadier than the ratio of two medians.

    Raises:
        ValueError: No pairs.
    """
    return median(ratio(a, b) for a, b in pairs)
