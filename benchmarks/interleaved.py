"""1-client latency measured in turns, next to the in-process call.

A 1-client target compares small differences (1 ms) between figures that this
kind of machine moves by far more: the in-process ``tabular`` call was measured at
10, 13 and 23 ms in half-second windows of one minute, the speed switching between
such levels every few seconds. A served p50 from a 5 s load run and an in-process
p50 taken seconds away differ by whatever the machine did in between.

So after the rounds, for each model and protocol, every system serving it and the
in-process call take turns in short blocks (``BLOCK_SECONDS``) for ``seconds``:
one cycle gives each source one block, the order rotating by one per
cycle. A block starts with one call that is not counted (the core ran another
process just before) and then calls one at a time until its time is up; its
figure is the median of its calls. What a system adds over the in-process call is
the median over cycles of its block's figure less the in-process figure of the
same cycle (the median of ``INPROCESS_PROCESSES`` processes' blocks), and what the gateway adds over the server behind it is taken the same
way. Blocks of one cycle are well under a second apart, so the machine's level
changes between them only in the few cycles that straddle a switch, which the
median passes over.

The served blocks come from :mod:`benchmarks.probes`' compiled C probe (one
connection, ready-made bytes), one process per system pinned to the
load-generator core and timed there; the in-process blocks come from
``benchmarks.reference``'s processes on the server core, timed there. The probe's
own cost, a few microseconds of system calls per call, counts against the
servers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from benchmarks.probes import ProbeError
from benchmarks.stats import NANOS_PER_MILLI, median, percentile

INPROCESS = "inprocess"
"""The in-process call: per cycle, the median of its processes' blocks."""
INPROCESS_PROCESSES = 3
"""How many processes make the in-process call. One process's call can run a
millisecond faster or slower than another's, for its whole life (where its memory
landed), which is as much as the 1 ms a target allows; the median of three is a
typical process's."""
BLOCK_SECONDS = 0.1
"""Each source's turn: short against the seconds between the machine's changes of
speed, long enough for a few ``tabular`` calls."""

Block = Callable[[float], list[int]]
"""Runs one block of about the given seconds (one uncounted call, then one call at
a time until they are up); the counted latencies in ns. A served system's is its
``CompiledProbe.block``, the in-process call's ``References.block``."""


def inprocess_source(index: int) -> str:
    """The source name of in-process process ``index``."""
    return f"{INPROCESS} {index}"


def _is_inprocess(name: str) -> bool:
    return name.startswith(f"{INPROCESS} ")


@dataclass
class Turns:
    """One model and protocol measured in turns."""

    model: str
    protocol: str
    cycles: list[dict[str, float]] = field(default_factory=list)
    """Per cycle, each source's block median in ms (a failed source drops out)."""
    latencies_ns: dict[str, list[int]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def added(self, source: str, baseline: str) -> tuple[float, int] | None:
        """Median over cycles of ``source``'s block less ``baseline``'s, and the
        number of cycles that had both; None if none had."""
        differences = [
            cycle[source] - cycle[baseline]
            for cycle in self.cycles
            if source in cycle and baseline in cycle
        ]
        if not differences:
            return None
        return median(differences), len(differences)

    def p50_ms(self, source: str) -> float | None:
        """The p50 of every counted call of ``source``."""
        latencies = sorted(self.latencies_ns.get(source, []))
        if not latencies:
            return None
        return percentile(latencies, 50) / NANOS_PER_MILLI

    def calls(self, source: str) -> int:
        return len(self.latencies_ns.get(source, []))

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "protocol": self.protocol,
            "cycles": self.cycles,
            "p50_ms": {name: self.p50_ms(name) for name in self.latencies_ns},
            "calls": {name: self.calls(name) for name in self.latencies_ns},
            "failures": self.failures,
        }


def take_turns(
    model: str,
    protocol: str,
    sources: Mapping[str, Block],
    seconds: float,
    block_s: float,
) -> Turns:
    """Cycle through ``sources`` for ``seconds``, one block of each per cycle.

    Sources named by :func:`inprocess_source` are the in-process call's processes:
    each cycle's ``INPROCESS`` figure is the median of their blocks, and their
    calls are also pooled under ``INPROCESS``. A source whose block fails
    (``ProbeError``, or ``OSError`` from a pipe) is reported in ``failures`` and
    left out of the cycles after.
    """
    turns = Turns(model, protocol)
    active = list(sources)
    stop = time.monotonic() + seconds
    number = 0
    while active and time.monotonic() < stop:
        shift = number % len(active)
        cycle: dict[str, float] = {}
        for name in active[shift:] + active[:shift]:
            try:
                latencies = sources[name](block_s)
            except (ProbeError, OSError) as exc:
                turns.failures.append(f"{model}/{protocol} {name}: {exc}")
                continue
            if latencies:
                cycle[name] = median(latencies) / NANOS_PER_MILLI
                turns.latencies_ns.setdefault(name, []).extend(latencies)
                if _is_inprocess(name):
                    turns.latencies_ns.setdefault(INPROCESS, []).extend(latencies)
        failed = {name for name in active if name not in cycle}
        active = [name for name in active if name not in failed]
        processes = [value for name, value in cycle.items() if _is_inprocess(name)]
        if processes:
            cycle[INPROCESS] = median(processes)
        if cycle:
            turns.cycles.append(cycle)
        number += 1
    return turns
