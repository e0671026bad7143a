"""Run the load: every scenario at every concurrency, interleaved over rounds.

Within a round, each concurrency level runs every scenario back to back, in an order
rotated by one per round, so slow drifts of the machine's background load spread
over all systems instead of hitting one. Each run is a warm-up (not counted) and
then a measured window; a run that fails is recorded and the others go on. The
1-client turns (:mod:`benchmarks.interleaved`) run after the rounds, on the same
servers.
"""

from __future__ import annotations

import contextlib
import functools
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import grpcload, h2load, wrk
from benchmarks.cpuload import busy_fractions, group_cpu_seconds, read_cpu_times
from benchmarks.interleaved import (
    BLOCK_SECONDS,
    INPROCESS,
    Block,
    Turns,
    inprocess_source,
    take_turns,
)
from benchmarks.probes import CompiledProbe, ProbeError, build_probe
from benchmarks.reference import References
from benchmarks.report import LABELS
from benchmarks.results import LoadSummary, RunResult
from benchmarks.settings import BenchOptions
from benchmarks.systems import Scenario
from benchmarks.targets import GrpcTarget, HttpTarget

Progress = Callable[[str], None]


class LoadError(Exception):
    """A load generator failed."""


@dataclass
class LoadTools:
    """Paths of the load generators and their scratch files."""

    wrk: str
    h2load: str | None
    scratch: Path
    script: Path = field(init=False)

    def __post_init__(self) -> None:
        self.script = wrk.write_script(self.scratch)


@dataclass
class RunLog:
    results: list[RunResult] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Measurement:
    """What one measured window produced besides the load generator's summary."""

    summary: LoadSummary
    core_busy: list[float]
    server_cpu_s: float


def measure(
    scenario: Scenario, clients: int, options: BenchOptions, tools: LoadTools
) -> Measurement:
    """Warm up, then measure one scenario at one concurrency.

    Raises:
        LoadError: The load generator failed.
    """
    target = scenario.target
    cpu = options.load_cpu
    try:
        if isinstance(target, HttpTarget):

            def http(seconds: int) -> LoadSummary:
                command = wrk.wrk_command(
                    target,
                    script=tools.script,
                    clients=clients,
                    seconds=seconds,
                    cpu=cpu,
                    wrk=tools.wrk,
                )
                return wrk.run_wrk(command, seconds)

            return _warm_then_measure(http, options, clients, scenario)
        if options.grpc_client == "h2load" and tools.h2load is not None:
            frame = h2load.write_frame(target, tools.scratch)
            log_file = tools.scratch / "h2load.log"
            h2load_path = tools.h2load

            def rpc(seconds: int) -> LoadSummary:
                command = h2load.h2load_command(
                    target,
                    frame_file=frame,
                    clients=clients,
                    seconds=seconds,
                    log_file=log_file,
                    cpu=cpu,
                    h2load=h2load_path,
                )
                return h2load.run_h2load(
                    command, log_file, seconds, target.response_bytes
                )

            return _warm_then_measure(rpc, options, clients, scenario)
        return _python_grpc(target, clients, options, scenario)
    except (wrk.WrkError, h2load.H2loadError, grpcload.GrpcLoadError) as exc:
        raise LoadError(str(exc)) from exc


MAX_DRAIN_SECONDS = 5.0


def drain_seconds(summary: LoadSummary | None, clients: int) -> float:
    """How long the server may still be busy with requests its clients abandoned.

    A load generator that exits leaves up to ``clients`` requests in flight, and most
    servers finish them anyway; at the rate just measured that takes about
    ``clients / rate`` seconds. Waiting that long keeps one run's backlog out of the
    next run's window.
    """
    if summary is None or summary.rps <= 0:
        return MAX_DRAIN_SECONDS
    return min(MAX_DRAIN_SECONDS, clients / summary.rps)


def _warm_then_measure(
    run: Callable[[int], LoadSummary],
    options: BenchOptions,
    clients: int,
    scenario: Scenario,
) -> Measurement:
    if options.warmup > 0:
        warm: LoadSummary | None = None
        # A slow system may complete nothing during a short warm-up; that is fine.
        with contextlib.suppress(wrk.WrkError, h2load.H2loadError):
            warm = run(options.warmup)
        time.sleep(drain_seconds(warm, clients))
    before = read_cpu_times()
    server_before = group_cpu_seconds(scenario.process_groups)
    summary = run(options.duration)
    server_cpu_s = group_cpu_seconds(scenario.process_groups) - server_before
    busy = busy_fractions(before, read_cpu_times())
    time.sleep(drain_seconds(summary, clients))
    return Measurement(summary, busy, server_cpu_s)


def _python_grpc(
    target: GrpcTarget, clients: int, options: BenchOptions, scenario: Scenario
) -> Measurement:
    # One process warms up and measures, so CPU counters cover both (scaled below).
    warmup_s = max(options.warmup, 1)
    command = grpcload.load_command(
        target,
        clients=clients,
        warmup_s=warmup_s,
        duration_s=options.duration,
        cpu=options.load_cpu,
    )
    before = read_cpu_times()
    server_before = group_cpu_seconds(scenario.process_groups)
    summary = grpcload.run_load(command, options.warmup + options.duration)
    server_cpu_s = group_cpu_seconds(scenario.process_groups) - server_before
    share = options.duration / (options.duration + warmup_s)
    return Measurement(
        summary, busy_fractions(before, read_cpu_times()), server_cpu_s * share
    )


def run_rounds(
    scenarios: list[Scenario],
    options: BenchOptions,
    tools: LoadTools,
    progress: Progress,
    before_round: Callable[[int], None] | None = None,
) -> RunLog:
    """Every scenario × concurrency × round, interleaved as the module says;
    ``before_round(round)`` (1-based) runs first in each round."""
    log = RunLog()
    total = len(scenarios) * len(options.clients) * options.rounds
    done = 0
    started = time.monotonic()
    for round_index in range(options.rounds):
        if before_round is not None:
            before_round(round_index + 1)
        for clients in options.clients:
            shift = round_index % max(len(scenarios), 1)
            ordered = scenarios[shift:] + scenarios[:shift]
            for scenario in ordered:
                done += 1
                name = (
                    f"{scenario.model}/{scenario.protocol} "
                    f"{LABELS[scenario.system]} ×{clients}"
                )
                try:
                    measured = measure(scenario, clients, options, tools)
                except LoadError as exc:
                    log.failures.append(f"round {round_index + 1} {name}: {exc}")
                    progress(f"[{done}/{total}] {name}: FAILED: {str(exc)[:300]}")
                    continue
                log.results.append(
                    RunResult(
                        model=scenario.model,
                        protocol=scenario.protocol,
                        system=scenario.system,
                        clients=clients,
                        round=round_index + 1,
                        load=measured.summary,
                        core_busy=measured.core_busy,
                        server_cpu_s=measured.server_cpu_s,
                    )
                )
                summary = measured.summary
                elapsed = time.monotonic() - started
                remaining = elapsed / done * (total - done)
                errors = f", {summary.errors} errors" if summary.errors else ""
                progress(
                    f"[{done}/{total}, ~{remaining / 60:.1f} min left] round "
                    f"{round_index + 1} {name}: {summary.rps:,.0f} req/s, "
                    f"p50 {summary.p50_ms:.2f} ms, "
                    f"p99 {summary.p99_ms:.2f} ms{errors}"
                )
    return log


def run_turns(
    scenarios: list[Scenario],
    options: BenchOptions,
    references: References | None,
    progress: Progress,
) -> list[Turns]:
    """Each model and protocol at 1 client: its systems and the in-process call
    in turns (:mod:`benchmarks.interleaved`).

    Each system's calls come from the compiled probe (:mod:`benchmarks.probes`,
    built in ``options.work_dir / "bin"``), pinned to ``options.load_cpu``."""
    groups: dict[tuple[str, str], list[Scenario]] = {}
    for scenario in scenarios:
        if scenario.model in options.models:
            groups.setdefault((scenario.model, scenario.protocol), []).append(scenario)
    try:
        binary: Path | None = build_probe(options.work_dir / "bin")
        unbuilt = ""
    except ProbeError as exc:
        binary, unbuilt = None, str(exc)
    measured: list[Turns] = []
    for (model, protocol), members in groups.items():
        sources: dict[str, Block] = {}
        failures: list[str] = []
        with contextlib.ExitStack() as probes:
            for scenario in members:
                name = f"{model}/{protocol} {scenario.system}"
                if binary is None:
                    failures.append(f"{name}: {unbuilt}")
                    continue
                try:
                    probe = CompiledProbe(
                        binary, scenario.target, options.work_dir, options.load_cpu
                    )
                except ProbeError as exc:
                    failures.append(f"{name}: {exc}")
                    continue
                probes.callback(probe.close)
                sources[scenario.system] = probe.block
            if references is not None:
                for index in references.processes(model):
                    sources[inprocess_source(index)] = functools.partial(
                        references.block, model, process_index=index
                    )
            progress(
                f"1 client in turns, {model}/{protocol}: {len(sources)} sources in "
                f"{BLOCK_SECONDS} s blocks for {options.turns_seconds:g} s …"
            )
            turns = take_turns(
                model, protocol, sources, options.turns_seconds, BLOCK_SECONDS
            )
        turns.failures[:0] = failures
        for failure in turns.failures:
            progress(f"1 client in turns: FAILED: {failure}")
        added = []
        for scenario in members:
            name = scenario.system
            over = turns.added(name, INPROCESS)
            if over is not None:
                added.append(f"{LABELS.get(name, name)} {over[0]:+.2f} ms")
        progress(
            f"1 client in turns, {model}/{protocol}: {len(turns.cycles)} cycles; "
            f"over the in-process call: {', '.join(added) or 'n/a'}"
        )
        measured.append(turns)
    return measured


def run_inprocess(
    options: BenchOptions, models: list[str], progress: Progress
) -> dict[str, Any]:
    """The in-process limit of each model, measured on the server core."""
    results: dict[str, Any] = {}
    for model in models:
        progress(f"in-process limit of {model!r} (batch 1 and 32) …")
        command = [
            sys.executable,
            "-m",
            "benchmarks.inprocess",
            "--registry",
            str(options.registry),
            "--model",
            model,
            "--seconds",
            str(options.inprocess_seconds),
            "--batch-sizes",
            f"1,{options.batching.max_batch_size}",
        ]
        if options.server_cpu is not None:
            command = ["taskset", "-c", str(options.server_cpu), *command]
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=600, check=False
        )
        lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
        if completed.returncode != 0 or not lines:
            progress(f"in-process {model}: FAILED: {completed.stderr[-500:]}")
            continue
        results[model] = json.loads(lines[-1])
        for entry in results[model]["results"]:
            progress(
                f"in-process {model} batch {entry['batch']}: p50 "
                f"{entry['p50_ms']:.3f} ms/call, {entry['rows_per_s']:,.0f} rows/s"
            )
    return results
