"""Turn the runs into the Markdown table, the target ratios and the raw JSON."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

from benchmarks.interleaved import INPROCESS, Turns
from benchmarks.results import Aggregate, RunResult, aggregate
from benchmarks.settings import MODELS
from benchmarks.stats import median, paired_ratio

LABELS = {
    "servekit": "servekit (batching off)",
    "servekit-batching": "servekit (batching on)",
    "mlserver": "MLServer (adaptive batching off)",
    "mlserver-batching": "MLServer (adaptive batching on)",
    "fastapi": "plain FastAPI",
    "gateway": "gateway → servekit",
    "gateway-unmerged": "gateway → servekit (coalescing off)",
    "gateway-v2": "gateway → servekit, OIP v2 (binary tensors / ModelInfer)",
    "gateway-grpcio": "gateway → servekit over plain gRPC (grpc.aio client)",
    "gateway-h2": "gateway → servekit over plain gRPC (h2 client)",
    "relay": "bare relay → servekit (forwards bytes only)",
    "grpc-ceiling": "trivial gRPC server",
    "servekit-grpc-before": "servekit, hand-written HTTP/2 (before)",
    "servekit-grpc-aio": "servekit on grpc.aio (reference)",
    "servekit-pickle": "servekit, pickle not compiled (batching off)",
    "servekit-pickle-batching": "servekit, pickle not compiled (batching on)",
    "servekit-approximate": "servekit, compiled approximate (batching off)",
    "servekit-approximate-batching": "servekit, compiled approximate (batching on)",
}
SYSTEM_ORDER = tuple(LABELS)
PROTOCOL_NAMES = {"rest": "REST", "grpc": "gRPC"}
TARGETS_HEADING = (
    "## Targets: throughput against MLServer and plain FastAPI, added latency at "
    "1 client, the gateway's cost, the gRPC server against grpc.aio"
)


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
    turns: list[Turns] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    server_cpu: int | None = 1
    sections: list[str] = field(default_factory=list)
    """Markdown sections rendered by their own modules (e.g. the encoding cost)."""

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


def target_checks(
    runs: Sequence[RunResult],
    turns: Sequence[Turns],
    clients: Sequence[int],
    gateway_backend: str,
) -> list[TargetCheck]:
    """The measured figures that have a goal: throughput against MLServer and plain
    FastAPI, added latency at 1 client, the gateway's cost over going direct, and the
    gRPC server against grpc.aio."""
    checks: list[TargetCheck | None] = []
    top = 32 if 32 in clients else max(clients)
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
                    8,  # the compiled model's goal (a pickle's was 2)
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
    checks += _turn_checks(turns, gateway_backend)
    for model in ("tabular", "digits") if top > 1 else ():
        for protocol in ("rest", "grpc"):
            for system, what in (
                ("gateway", "gateway"),
                ("gateway-unmerged", "gateway with coalescing off"),
            ):
                checks.append(
                    _ratio_check(
                        f"{model} {PROTOCOL_NAMES[protocol]} ×{top}: {what} / direct "
                        "throughput",
                        _rounds(runs, model, protocol, system, top),
                        _rounds(runs, model, protocol, gateway_backend, top),
                        0.8,
                    )
                )
    variants = ("servekit-grpc-aio", "servekit-grpc-before")
    cells = product(MODELS, clients, variants)
    checks += [_grpc_server_check(runs, *cell) for cell in cells]
    return [check for check in checks if check is not None]


def _grpc_server_check(  # floor: grpc.aio; the cost against "before": no goal
    runs: Sequence[RunResult], model: str, clients: int, system: str
) -> TargetCheck | None:
    check = _ratio_check(
        f"{model} gRPC ×{clients}: servekit (h2) / {LABELS[system]}",
        _rounds(runs, model, "grpc", "servekit", clients),
        _rounds(runs, model, "grpc", system, clients),
        1.0,
    )
    if check is None or system == "servekit-grpc-aio":
        return check
    return TargetCheck(check.name, check.value, "x", "-", None)


def _turn_checks(measured: Sequence[Turns], gateway_backend: str) -> list[TargetCheck]:
    """The 1-client targets, from the turns (:mod:`benchmarks.interleaved`)."""
    checks: list[TargetCheck] = []
    for turns in measured:
        prefix = f"{turns.model} {PROTOCOL_NAMES[turns.protocol]} ×1"
        for system in ("servekit", "servekit-batching"):
            added = turns.added(system, INPROCESS)
            if added is not None:
                value, cycles = added
                checks.append(
                    TargetCheck(
                        f"{prefix}: {LABELS[system]} p50 − in-process batch-1 p50",
                        value,
                        "ms+",
                        "≤ 1 ms",
                        value <= 1.0,
                        f"in turns, median of {cycles} cycles; in-process "
                        f"{_ms(turns.p50_ms(INPROCESS))} ms",
                    )
                )
        for system, name, goal in (
            ("gateway", "gateway added p50", True),
            (
                "relay",
                "bare relay added p50 (the hop's own cost, for reference)",
                False,
            ),
        ):
            added = turns.added(system, gateway_backend)
            if added is None:
                continue
            value, cycles = added
            checks.append(
                TargetCheck(
                    f"{prefix}: {name}",
                    value,
                    "ms+",
                    "≤ 1 ms" if goal else "–",
                    value <= 1.0 if goal else None,
                    f"in turns with {LABELS[gateway_backend]}, median of {cycles} "
                    "cycles"
                    if goal
                    else "",
                )
            )
    return checks


def _turns_label(name: str) -> str:
    if name == INPROCESS:
        return "in-process call (all its processes)"
    if name.startswith(f"{INPROCESS} "):
        return f"in-process call, process {name.split()[-1]}"
    return LABELS.get(name, name)


def _turns_order(name: str) -> tuple[int, str, int]:
    if name == INPROCESS:
        return (0, "", 0)
    if name in SYSTEM_ORDER:
        return (2, "", SYSTEM_ORDER.index(name))
    return (1, name, 0)


def render_turns_table(turns: Turns) -> str:
    """One model and protocol's 1-client turns: each source's calls and p50, and
    what it adds over the in-process call (median over cycles)."""
    lines = [
        "| source | calls | p50 ms | added over the in-process call, ms |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name in sorted(turns.latencies_ns, key=_turns_order):
        # The in-process processes' spread shows in their p50s; each one's
        # difference from their per-cycle median is mostly zero by construction.
        added = None if name.startswith(INPROCESS) else turns.added(name, INPROCESS)
        lines.append(
            f"| {_turns_label(name)} | {turns.calls(name):,} "
            f"| {_ms(turns.p50_ms(name))} "
            f"| {'–' if added is None else f'{added[0]:+.2f}'} |"
        )
    return "\n".join(lines)


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
    if report.turns:
        parts += [
            "## 1 client, in turns with the in-process call",
            "",
            "Each system serving a model and the in-process call took turns in "
            "0.1 s blocks of one-at-a-time calls, the order rotating each cycle; "
            '"added" is the median over cycles of a system\'s block median less the '
            "median of the in-process processes' block medians in the same cycle "
            "(the served calls come from a compiled C probe on the load-generator "
            "core, whose own cost, a few µs of system calls per call, counts "
            "against the servers).",
            "",
        ]
        for turns in report.turns:
            parts += [
                f"### {turns.model} · {PROTOCOL_NAMES[turns.protocol]} "
                f"({len(turns.cycles)} cycles)",
                "",
                render_turns_table(turns),
                "",
            ]
    parts += [line for section in report.sections for line in (section, "")]
    if checks:
        parts += [TARGETS_HEADING, "", render_checks(checks), ""]
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
        "turns": [turns.to_json() for turns in report.turns],
        "aggregates": [asdict(item) for item in report.aggregates()],
        "targets": [asdict(check) for check in checks],
        "runs": [run.to_json() for run in report.runs],
    }
    (directory / "latest.json").write_text(
        json.dumps(raw, indent=2, allow_nan=True), encoding="utf-8"
    )
    return markdown
