"""How busy each CPU was over a window, from ``/proc/stat``.

The load generator and the servers are pinned to different cores, so the busy
fraction of each core shows which side saturated (and how much other work on a
shared machine got in the way).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

CpuTimes = list[tuple[int, int]]
"""Per CPU: (busy jiffies, total jiffies)."""

PROC_STAT = Path("/proc/stat")


def parse_proc_stat(text: str) -> CpuTimes:
    """Busy and total jiffies of each ``cpuN`` line (the aggregate line is skipped).

    Busy is everything but ``idle`` and ``iowait`` (the 4th and 5th counters).
    """
    times: CpuTimes = []
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu":
            continue
        counters = [int(value) for value in rest.split()]
        total = sum(counters[:8])
        idle = counters[3] + (counters[4] if len(counters) > 4 else 0)
        times.append((total - idle, total))
    return times


def read_cpu_times() -> CpuTimes:
    """Current counters, or none where ``/proc/stat`` does not exist."""
    try:
        return parse_proc_stat(PROC_STAT.read_text(encoding="ascii"))
    except OSError:
        return []


def busy_fractions(before: CpuTimes, after: CpuTimes) -> list[float]:
    """Busy fraction (0-1) of each CPU between two readings."""
    fractions = []
    for (busy_0, total_0), (busy_1, total_1) in zip(before, after, strict=False):
        elapsed = total_1 - total_0
        fractions.append((busy_1 - busy_0) / elapsed if elapsed > 0 else 0.0)
    return fractions


PROC = Path("/proc")


def parse_pid_stat(text: str) -> tuple[int, int]:
    """The process group and the user + system clock ticks of a ``/proc/PID/stat``.

    The command name (2nd field) is in parentheses and may hold spaces, so fields
    are counted from the last ``)``: state, ppid, pgrp, ... utime is the 14th field
    and stime the 15th of the whole line.
    """
    fields = text.rpartition(")")[2].split()
    return int(fields[2]), int(fields[11]) + int(fields[12])


def parse_pid_parent(text: str) -> tuple[int, int]:
    """The parent's pid and the user + system clock ticks of a ``/proc/PID/stat``
    (fields counted as in :func:`parse_pid_stat`: ppid is the 4th of the line)."""
    fields = text.rpartition(")")[2].split()
    return int(fields[1]), int(fields[11]) + int(fields[12])


def family_cpu_seconds(parent: int) -> float:
    """CPU seconds used so far by ``parent`` and its live child processes.

    Threads are included; children that already exited are not, which is fine
    for long-lived worker processes started before the measured window.
    """
    ticks = 0
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid, used = parse_pid_parent((entry / "stat").read_text(encoding="ascii"))
        except (OSError, ValueError, IndexError):
            continue  # exited meanwhile, or not readable
        if ppid == parent or int(entry.name) == parent:
            ticks += used
    return ticks / os.sysconf("SC_CLK_TCK")


def group_cpu_seconds(groups: Iterable[int]) -> float:
    """CPU seconds used so far by the live processes of the given process groups.

    Threads are included (the per-process counters sum them); processes that
    already exited are not, which is fine for the servers' long-lived processes.
    """
    wanted = set(groups)
    if not wanted:
        return 0.0
    ticks = 0
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            group, used = parse_pid_stat((entry / "stat").read_text(encoding="ascii"))
        except (OSError, ValueError, IndexError):
            continue  # exited meanwhile, or not readable
        if group in wanted:
            ticks += used
    return ticks / os.sysconf("SC_CLK_TCK")
