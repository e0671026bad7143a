"""What one measured run produced, and the medians over rounds."""

from __future__ import annotations

import resource
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from benchmarks.stats import median


def children_cpu_seconds() -> float:
    """User + system CPU seconds of this process's finished child processes."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class LoadSummary:
    """What a load generator reports for one measured window."""

    requests: int
    errors: int
    duration_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    client_cpu: float | None = None
    """Load generator CPU time over the window, in cores (1.0 = one core busy)."""
    error_kinds: dict[str, int] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0


@dataclass(frozen=True)
class RunResult:
    """One system, one model, one protocol, one concurrency, one round."""

    model: str
    protocol: str
    system: str
    clients: int
    round: int
    load: LoadSummary
    core_busy: list[float] = field(default_factory=list)
    """Busy fraction of each CPU over the window (from /proc/stat)."""
    server_cpu_s: float | None = None
    """CPU seconds the serving processes used over the window."""

    @property
    def server_cpu_ms_per_request(self) -> float | None:
        """Server CPU per request: steadier than req/s on a shared machine."""
        if self.server_cpu_s is None or self.load.requests == 0:
            return None
        return self.server_cpu_s * 1000 / self.load.requests

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.model, self.protocol, self.system, self.clients)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["load"]["rps"] = self.load.rps
        data["server_cpu_ms_per_request"] = self.server_cpu_ms_per_request
        return data


@dataclass(frozen=True)
class Aggregate:
    """Medians over the rounds of one (model, protocol, system, clients) cell."""

    model: str
    protocol: str
    system: str
    clients: int
    rounds: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    client_cpu: float | None
    server_core_busy: float | None
    server_cpu_ms_per_request: float | None = None


def aggregate(runs: Iterable[RunResult], server_cpu: int | None) -> list[Aggregate]:
    """Median req/s, p50 and p99 per cell; errors are summed, not medianed."""
    cells: dict[tuple[str, str, str, int], list[RunResult]] = defaultdict(list)
    for run in runs:
        cells[run.key].append(run)
    aggregates = []
    for (model, protocol, system, clients), group in cells.items():
        cpu_values = [run.load.client_cpu for run in group]
        client_cpu = (
            median(value for value in cpu_values if value is not None)
            if any(value is not None for value in cpu_values)
            else None
        )
        busy = [
            run.core_busy[server_cpu]
            for run in group
            if server_cpu is not None and server_cpu < len(run.core_busy)
        ]
        per_request = [
            value
            for value in (run.server_cpu_ms_per_request for run in group)
            if value is not None
        ]
        aggregates.append(
            Aggregate(
                model=model,
                protocol=protocol,
                system=system,
                clients=clients,
                rounds=len(group),
                rps=median(run.load.rps for run in group),
                p50_ms=median(run.load.p50_ms for run in group),
                p99_ms=median(run.load.p99_ms for run in group),
                errors=sum(run.load.errors for run in group),
                client_cpu=client_cpu,
                server_core_busy=median(busy) if busy else None,
                server_cpu_ms_per_request=median(per_request) if per_request else None,
            )
        )
    return aggregates


def merge_inprocess(by_round: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """One in-process entry per model from the rounds' measurements: each batch
    size's figures are medians over rounds."""
    merged: dict[str, Any] = {}
    models = {model for measured in by_round.values() for model in measured}
    for model in sorted(models):
        per_round = {
            number: measured[model]
            for number, measured in sorted(by_round.items())
            if model in measured
        }
        entry: dict[str, Any] = {"model": model}
        for kind in ("results", "process_filters"):
            batches: dict[int, list[dict[str, Any]]] = {}
            for limit in per_round.values():
                for item in limit.get(kind, []):
                    batches.setdefault(item["batch"], []).append(item)
            entry[kind] = [
                {
                    "batch": batch,
                    "calls": sum(item["calls"] for item in items),
                    **{
                        key: median(float(item[key]) for item in items)
                        for key in ("p50_ms", "p99_ms", "mean_ms", "rows_per_s")
                    },
                }
                for batch, items in sorted(batches.items())
            ]
        merged[model] = entry
    return merged
