"""Turn the runs into the Markdown table, the target ratios and the raw JSON."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.results import Aggregate, RunResult, aggregate
from benchmarks.stats import median, paired_difference, paired_ratio

LABELS = {
    "servekit": "servekit (batching off)",
    "servekit-batching": "servekit (batching on)",
    "mlserver": "MLServer (adaptive batching off)",
    "mlserver-batching": "MLServer (adaptive batching on)",
    "fastapi": "plain FastAPI",
    "gateway": "gateway → servekit",
    "gateway-unmerged": "gateway → servekit (coalescing off)",
    "relay": "bare relay → servekit (forwards bytes only)",
    "grpc-ceiling": "trivial gRPC server",
}
SYSTEM_ORDER = tuple(LABELS)
PROTOCOL_NAMES = {"rest": "REST", "grpc": "gRPC"}


@dataclass(frozen=True)
class TargetCheck:
    """One ratio or difference the issues set a goal for."""

    name: str
    value: float
    unit: str
    goal: str
    met: bool | None
    detail: str = ""

    def measured(self) -> str:
        if math.isnan(self.value):
            return "n/a"
        if self.unit == "x":
            return f"{self.value:.2f}×"
        return f"{self.value:+.2f} ms" if self.unit == "ms+" else f"{self.value:.2f} ms"


@dataclass
class Report:
    """Everything one benchmark run produced."""

    meta: dict[str, Any]
    runs: list[RunResult]
    inprocess: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    server_cpu: int | None = 1

    def aggregates(self) -> list[Aggregate]:
        return aggregate(self.runs, self.server_cpu)


def _rounds(
    runs: Iterable[RunResult], model: str, protocol: str, system: str, clients: int
) -> dict[int, RunResult]:
    return {
        run.round: run
        for run in runs
        if (run.model, run.protocol, run.system, run.clients)
        == (model, protocol, system, clients)
    }


def _pairs(
    a: dict[int, RunResult], b: dict[int, RunResult], metric: str
) -> list[tuple[float, float]]:
    def value(run: RunResult) -> float:
        return run.load.rps if metric == "rps" else float(getattr(run.load, metric))

    return [(value(a[r]), value(b[r])) for r in sorted(a.keys() & b.keys())]


def _bracketed(runs: dict[int, RunResult]) -> dict[int, float]:
    """Round -> p50 less the run's own in-process reference, where it has one."""
    return {
        number: float(run.load.p50_ms) - run.reference_p50_ms
        for number, run in runs.items()
        if run.reference_p50_ms is not None
    }


def _added_p50(
    through: dict[int, RunResult], direct: dict[int, RunResult]
) -> tuple[float, str] | None:
    """Median p50 a hop adds over direct, and how the rounds were paired.

    Where both runs of a round carry their in-process reference, each p50 is taken
    less its own reference first, which cancels the machine's drift between the two
    runs; otherwise the raw p50s of a round are paired.
    """
    mine, theirs = _bracketed(through), _bracketed(direct)
    common = sorted(mine.keys() & theirs.keys())
    if common:
        added = paired_difference((mine[r], theirs[r]) for r in common)
        return added, "each p50 less its run's in-process reference"
    pairs = _pairs(through, direct, "p50_ms")
    if not pairs:
        return None
    return paired_difference(pairs), "paired by round"


def _median_of(runs: dict[int, RunResult], metric: str) -> float:
    if not runs:
        return math.nan
    if metric == "rps":
        return median(run.load.rps for run in runs.values())
    return median(float(getattr(run.load, metric)) for run in runs.values())


def _ratio_check(
    name: str,
    numerator: dict[int, RunResult],
    denominator: dict[int, RunResult],
    goal: float,
    detail: str = "",
) -> TargetCheck | None:
    pairs = _pairs(numerator, denominator, "rps")
    if not pairs:
        return None
    value = paired_ratio(pairs)
    return TargetCheck(name, value, "x", f"≥ {goal:g}×", value >= goal, detail)


def _p99_check(
    name: str, ours: dict[int, RunResult], theirs: dict[int, RunResult]
) -> TargetCheck | None:
    if not ours or not theirs:
        return None
    mine, other = _median_of(ours, "p99_ms"), _median_of(theirs, "p99_ms")
    return TargetCheck(
        name, mine, "ms", f"≤ {other:.2f} ms", mine <= other, f"theirs {other:.2f} ms"
    )


def _best(
    runs: Sequence[RunResult],
    model: str,
    protocol: str,
    systems: Sequence[str],
    clients: int,
) -> tuple[str, dict[int, RunResult]] | None:
    candidates = [
        (system, _rounds(runs, model, protocol, system, clients)) for system in systems
    ]
    candidates = [(system, cells) for system, cells in candidates if cells]
    if not candidates:
        return None
    return max(candidates, key=lambda item: _median_of(item[1], "rps"))


def merge_inprocess(by_round: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """One in-process entry per model from the rounds' measurements: each batch
    size's figures are medians over rounds, and ``rounds`` keeps every round's
    batch-1 p50 for the paired comparison with the served p50 of that round."""
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
        entry["rounds"] = {
            number: next(
                float(item["p50_ms"]) for item in limit["results"] if item["batch"] == 1
            )
            for number, limit in per_round.items()
            if any(item["batch"] == 1 for item in limit["results"])
        }
        merged[model] = entry
    return merged


def target_checks(
    runs: Sequence[RunResult],
    inprocess: dict[str, Any],
    clients: Sequence[int],
    gateway_backend: str,
) -> list[TargetCheck]:
    """The ratios issues 3 and 4 set targets for, from what was measured."""
    checks: list[TargetCheck | None] = []
    top = 32 if 32 in clients else max(clients)
    low = 1 if 1 in clients else min(clients)
    ours = "servekit-batching"
    for protocol in ("rest", "grpc"):
        name = PROTOCOL_NAMES[protocol]
        batched = _rounds(runs, "tabular", protocol, ours, top)
        best = _best(runs, "tabular", protocol, ("mlserver", "mlserver-batching"), top)
        if best is not None:
            best_system, best_runs = best
            checks.append(
                _ratio_check(
                    f"tabular {name} ×{top}: servekit (batching on) / best MLServer",
                    batched,
                    best_runs,
                    2,
                    f"best MLServer: {LABELS[best_system]}",
                )
            )
            checks.append(
                _p99_check(
                    f"tabular {name} ×{top}: p99 vs best MLServer", batched, best_runs
                )
            )
        fastapi = _rounds(runs, "tabular", protocol, "fastapi", top)
        checks.append(
            _ratio_check(
                f"tabular {name} ×{top}: servekit (batching on) / plain FastAPI",
                batched,
                fastapi,
                5,
            )
        )
        checks.append(
            _p99_check(f"tabular {name} ×{top}: p99 vs plain FastAPI", batched, fastapi)
        )
        checks.append(
            _ratio_check(
                f"digits {name} ×{top}: servekit (batching on) / plain FastAPI",
                _rounds(runs, "digits", protocol, ours, top),
                _rounds(runs, "digits", protocol, "fastapi", top),
                2,
            )
        )
    for model, limit in inprocess.items():
        batch_one = next(
            (entry for entry in limit["results"] if entry["batch"] == 1), None
        )
        if batch_one is None:
            continue
        for protocol in ("rest", "grpc"):
            for system in ("servekit", "servekit-batching"):
                cells = _rounds(runs, model, protocol, system, low)
                if not cells:
                    continue
                by_round = limit.get("rounds") or {}
                pairs = [
                    (float(cells[r].load.p50_ms), float(by_round[r]))
                    for r in sorted(cells.keys() & by_round.keys())
                ]
                bracketed = _bracketed(cells)
                if bracketed:
                    added = median(bracketed.values())
                    pairing = ", paired with the in-process call around each run"
                elif pairs:
                    added = paired_difference(pairs)
                    pairing = ", paired by round"
                else:
                    added = _median_of(cells, "p50_ms") - float(batch_one["p50_ms"])
                    pairing = ""
                checks.append(
                    TargetCheck(
                        f"{model} {PROTOCOL_NAMES[protocol]} ×{low}: {LABELS[system]} "
                        "p50 − in-process batch-1 p50",
                        added,
                        "ms+",
                        "≤ 1 ms",
                        added <= 1.0,
                        f"in-process {float(batch_one['p50_ms']):.3f} ms, server's "
                        "warning filters" + pairing,
                    )
                )
    for model in ("tabular", "digits"):
        for protocol in ("rest", "grpc"):
            name = PROTOCOL_NAMES[protocol]
            through = _rounds(runs, model, protocol, "gateway", low)
            direct = _rounds(runs, model, protocol, gateway_backend, low)
            gateway_added = _added_p50(through, direct)
            if gateway_added is not None:
                added, pairing = gateway_added
                checks.append(
                    TargetCheck(
                        f"{model} {name} ×{low}: gateway added p50",
                        added,
                        "ms+",
                        "≤ 1 ms",
                        added <= 1.0,
                        f"direct {_median_of(direct, 'p50_ms'):.2f} ms, {pairing}",
                    )
                )
            relay_added = _added_p50(
                _rounds(runs, model, protocol, "relay", low), direct
            )
            if relay_added is not None:
                floor, _ = relay_added
                checks.append(
                    TargetCheck(
                        f"{model} {name} ×{low}: bare relay added p50 (the hop's "
                        "own cost, for reference)",
                        floor,
                        "ms+",
                        "–",
                        None,
                    )
                )
            for system, what in (
                ("gateway", "gateway"),
                ("gateway-unmerged", "gateway with coalescing off"),
            ):
                checks.append(
                    _ratio_check(
                        f"{model} {name} ×{top}: {what} / direct throughput",
                        _rounds(runs, model, protocol, system, top),
                        _rounds(runs, model, protocol, gateway_backend, top),
                        0.8,
                    )
                )
    return [check for check in checks if check is not None]


def _ms(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "–"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def _fraction(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.0f}%"


def render_load_table(
    aggregates: Sequence[Aggregate], model: str, protocol: str
) -> str:
    """One Markdown table: every system at every concurrency for a model/protocol."""
    rows = [a for a in aggregates if a.model == model and a.protocol == protocol]
    rows.sort(key=lambda a: (a.clients, SYSTEM_ORDER.index(a.system)))
    lines = [
        "| clients | system | req/s | p50 ms | p99 ms | errors "
        "| server CPU ms/req | load-gen CPU | server core busy |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row.clients} | {LABELS.get(row.system, row.system)} | {row.rps:,.0f} "
            f"| {_ms(row.p50_ms)} | {_ms(row.p99_ms)} | {row.errors} "
            f"| {_ms(row.server_cpu_ms_per_request)} "
            f"| {_fraction(row.client_cpu)} | {_fraction(row.server_core_busy)} |"
        )
    return "\n".join(lines)


def render_inprocess_table(inprocess: dict[str, Any]) -> str:
    """The direct calls, under the server's warning filters and the process's own."""
    lines = [
        "| model | batch | p50 ms/call | p99 ms/call | rows/s "
        "| p50 ms/call, the process's own warning filters |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for model, limit in inprocess.items():
        plain = {entry["batch"]: entry for entry in limit.get("process_filters", [])}
        for entry in limit["results"]:
            other = plain.get(entry["batch"])
            other_p50 = f"{other['p50_ms']:.3f}" if other else "–"
            lines.append(
                f"| {model} | {entry['batch']} | {entry['p50_ms']:.3f} "
                f"| {entry['p99_ms']:.3f} | {entry['rows_per_s']:,.0f} | {other_p50} |"
            )
    return "\n".join(lines)


def render_checks(checks: Sequence[TargetCheck]) -> str:
    lines = ["| what | measured | goal | met |", "| --- | ---: | --- | --- |"]
    for check in checks:
        met = "–" if check.met is None else ("yes" if check.met else "**no**")
        detail = f" ({check.detail})" if check.detail else ""
        lines.append(
            f"| {check.name}{detail} | {check.measured()} | {check.goal} | {met} |"
        )
    return "\n".join(lines)


def render_markdown(report: Report, checks: Sequence[TargetCheck]) -> str:
    """The whole ``latest.md``."""
    meta = report.meta
    aggregates = report.aggregates()
    parts = [
        "# servekit benchmarks",
        "",
        f"Run {meta.get('finished', '?')} on {meta.get('cpus', '?')} CPUs "
        f"(commit {meta.get('commit', '?')}): {meta.get('rounds')} round(s) × "
        f"{meta.get('duration')} s per run after {meta.get('warmup')} s of warm-up; "
        f"medians over rounds, ratios are medians of per-round ratios. "
        f"Load average {meta.get('loadavg_start', '?')} at the start, "
        f"{meta.get('loadavg_end', '?')} at the end.",
        "",
        f"Pinning: {meta.get('pinning', '?')}. HTTP load: wrk; gRPC load: "
        f"{meta.get('grpc_client', '?')}. servekit batching: {meta.get('batching', '?')}. "
        f"MLServer adaptive batching: {meta.get('mlserver_batching', '?')}.",
        "",
    ]
    if report.inprocess:
        parts += [
            "## In-process limit (the model called directly)",
            "",
            "Measured under the model server's warning filters, so a served p50 minus "
            "this one is what serving adds to the same call. The last column is the "
            "same call under the filters the process's imports leave, as a plain "
            "script makes it (scikit-learn re-installs every filter in each joblib "
            "task, one per tree of a forest).",
            "",
        ]
        parts += [render_inprocess_table(report.inprocess), ""]
    protocol_tools = {"rest": "wrk", "grpc": str(meta.get("grpc_client", "gRPC"))}
    for model in ("tabular", "digits", "-"):
        for protocol in ("rest", "grpc"):
            if not any(a.model == model and a.protocol == protocol for a in aggregates):
                continue
            title = (
                "gRPC load generator ceiling (trivial server)"
                if model == "-"
                else f"{model} · {PROTOCOL_NAMES[protocol]} ({protocol_tools[protocol]})"
            )
            parts += [
                f"## {title}",
                "",
                render_load_table(aggregates, model, protocol),
                "",
            ]
    if checks:
        parts += ["## Targets (issues 3 and 4)", "", render_checks(checks), ""]
    if report.notes:
        parts += ["## Notes", ""] + [f"- {note}" for note in report.notes] + [""]
    if report.failures:
        parts += (
            ["## Failed runs", ""] + [f"- {item}" for item in report.failures] + [""]
        )
    return "\n".join(parts)


def write_report(report: Report, checks: Sequence[TargetCheck], directory: Path) -> str:
    """Write ``latest.md`` and ``latest.json``; return the Markdown."""
    directory.mkdir(parents=True, exist_ok=True)
    markdown = render_markdown(report, checks)
    (directory / "latest.md").write_text(markdown, encoding="utf-8")
    raw = {
        "meta": report.meta,
        "notes": report.notes,
        "failures": report.failures,
        "inprocess": report.inprocess,
        "aggregates": [asdict(item) for item in report.aggregates()],
        "targets": [asdict(check) for check in checks],
        "runs": [run.to_json() for run in report.runs],
    }
    (directory / "latest.json").write_text(
        json.dumps(raw, indent=2, allow_nan=True), encoding="utf-8"
    )
    return markdown
