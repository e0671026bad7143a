"""``python -m benchmarks`` (``make bench``): install what is missing, start every
system, measure, and write ``bench-results/latest.md`` and ``latest.json``."""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any

from benchmarks import encoding, prerequisites
from benchmarks.interleaved import INPROCESS_PROCESSES, Turns
from benchmarks.payloads import PayloadError, build_payloads
from benchmarks.reference import ReferenceFailed, References
from benchmarks.report import Report, target_checks, write_report
from benchmarks.results import merge_inprocess
from benchmarks.runner import LoadTools, run_inprocess, run_rounds, run_turns
from benchmarks.servers import ProcessSet, StartError
from benchmarks.settings import REPO_ROOT, BenchOptions, parse_options
from benchmarks.systems import start_systems

STARTED = time.monotonic()


def progress(message: str) -> None:
    elapsed = time.monotonic() - STARTED
    print(f"[{elapsed:6.0f}s] {message}", flush=True)


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:  # noqa: ARG001
    # Turn SIGTERM into an exception so the finally blocks stop every server.
    raise SystemExit(128 + signum)


def _loadavg() -> str:
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "?"


def _commit() -> str:
    completed = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=False,
    )
    return completed.stdout.strip() or "?"


def _pinning(options: BenchOptions) -> str:
    if options.load_cpu is None or options.server_cpu is None:
        return "none (--no-pin): load generators and servers share every CPU"
    return (
        f"load generators on CPU {options.load_cpu}; every server (model servers, "
        "gateway, bare relays, MLServer and its workers, FastAPI, trivial gRPC "
        f"server) and the in-process measurement on CPU {options.server_cpu}. The gateway shares "
        f"CPU {options.server_cpu} with the model server behind it and the direct "
        "runs use the same CPU, so both sides of the gateway comparison get one core "
        "for the whole serving path"
    )


def _check_cpus(options: BenchOptions) -> BenchOptions:
    from dataclasses import replace

    available = os.sched_getaffinity(0)
    wanted = {cpu for cpu in (options.load_cpu, options.server_cpu) if cpu is not None}
    if wanted and not wanted <= available:
        progress(
            f"CPUs {sorted(wanted)} not all available ({sorted(available)}): no pinning"
        )
        return replace(options, load_cpu=None, server_cpu=None)
    if options.load_cpu is not None:
        # The harness itself (mostly asleep) stays off the server core.
        os.sched_setaffinity(0, {options.load_cpu})
    return options


def run(options: BenchOptions) -> int:
    options = _check_cpus(options)
    options.work_dir.mkdir(parents=True, exist_ok=True)
    estimate = float(
        options.runs_per_round() * options.rounds * (options.duration + options.warmup)
    )
    if 1 in options.clients:
        estimate += len(options.models) * len(options.protocols) * options.turns_seconds
    progress(
        f"benchmarking {', '.join(options.models)} over {', '.join(options.protocols)}: "
        f"{options.rounds} round(s) × {options.duration} s runs; load phase ≈ "
        f"{estimate / 60:.1f} min (plus start-up)"
    )
    install = options.install
    wrk_path = prerequisites.ensure_debian_tool(
        "wrk", "wrk", install=install, progress=progress
    )
    h2load_path: str | None = None
    notes: list[str] = []
    if "grpc" in options.protocols and options.grpc_client == "h2load":
        try:
            h2load_path = prerequisites.ensure_debian_tool(
                "h2load", "nghttp2-client", install=install, progress=progress
            )
        except prerequisites.PrerequisiteError as exc:
            progress(f"h2load unavailable ({exc}); gRPC load falls back to Python")
            notes.append("gRPC load used the Python client: h2load was unavailable.")
    mlserver = None
    if (
        options.wants("mlserver") or options.wants("mlserver-batching")
    ) and "tabular" in options.models:
        mlserver = prerequisites.ensure_mlserver(
            options.work_dir / "mlserver-venv", install=install, progress=progress
        )
    prerequisites.ensure_models(
        options.registry, options.models, install=install, progress=progress
    )
    payload_dir = options.work_dir / "payloads"
    payloads = {
        model: build_payloads(options.registry, model, payload_dir)
        for model in options.models
    }
    tools = LoadTools(
        wrk=wrk_path, h2load=h2load_path, scratch=options.work_dir / "load"
    )
    loadavg_start = _loadavg()
    processes = ProcessSet(log_dir=options.work_dir / "logs")
    references: References | None = None
    turns: list[Turns] = []
    try:
        progress(f"starting servers (logs in {processes.log_dir})")
        deployment = start_systems(options, payloads, processes, mlserver, progress)
        # The in-process table: measured at the start of every round, medians
        # over rounds. The 1-client targets use the turns instead.
        inprocess_rounds: dict[int, dict[str, Any]] = {}

        def measure_inprocess(round_number: int) -> None:
            if options.wants("inprocess"):
                inprocess_rounds[round_number] = run_inprocess(
                    options, list(options.models), progress
                )

        log = run_rounds(
            deployment.scenarios, options, tools, progress, measure_inprocess
        )
        if 1 in options.clients:
            if options.wants("inprocess"):
                progress("starting the in-process calls for the 1-client turns")
                references = References(
                    options.registry,
                    options.models,
                    options.server_cpu,
                    INPROCESS_PROCESSES,
                )
            turns = run_turns(deployment.scenarios, options, references, progress)
        inprocess = merge_inprocess(inprocess_rounds)
    finally:
        progress("stopping servers")
        if references is not None:
            references.close()
        processes.stop_all()
    encoded: list[dict[str, object]] = []
    if options.wants("encoding"):
        # In process, once the servers are gone: the machine is the measurement's.
        seconds = 0.05 if options.quick else 0.2
        encoded = encoding.measure_all(options.rounds, seconds, progress)
    grpc_client = "h2load (nghttp2)" if h2load_path else "Python grpc.aio client"
    batching = options.batching
    meta = {
        "finished": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _commit(),
        "cpus": os.cpu_count(),
        "rounds": options.rounds,
        "duration": options.duration,
        "warmup": options.warmup,
        "clients": list(options.clients),
        "loadavg_start": loadavg_start,
        "loadavg_end": _loadavg(),
        "pinning": _pinning(options),
        "grpc_client": grpc_client,
        "batching": (
            f"max_batch_size {batching.max_batch_size}, batch_timeout_micros "
            f"{batching.batch_timeout_micros}, num_batch_threads "
            f"{batching.num_batch_threads}, max_enqueued_batches "
            f"{batching.max_enqueued_batches}"
        ),
        "mlserver_batching": (
            f"max_batch_size {batching.mlserver_max_batch_size}, max_batch_time "
            f"{batching.mlserver_max_batch_time} s, parallel_workers "
            f"{options.mlserver_workers}"
        ),
        "startup_seconds": deployment.startup_seconds,
        "answers": deployment.answers,
        "quick": options.quick,
        "encoding": encoded,
    }
    failures = log.failures + [item for each in turns for item in each.failures]
    report = Report(
        meta=meta,
        runs=log.results,
        inprocess=inprocess,
        turns=turns,
        notes=notes + deployment.notes,
        failures=failures,
        server_cpu=options.server_cpu,
        sections=[encoding.render_section(encoded)] if encoded else [],
    )
    checks = target_checks(log.results, turns, options.clients, options.gateway_backend)
    markdown = write_report(report, checks, options.output_dir)
    print()
    print(markdown)
    progress(f"wrote {options.output_dir / 'latest.md'} and latest.json")
    return 0 if (log.results or encoded) and not failures else 1


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        return run(options)
    except (
        prerequisites.PrerequisiteError,
        PayloadError,
        StartError,
        ReferenceFailed,
    ) as exc:
        progress(f"benchmark aborted: {exc}")
        return 2
    except KeyboardInterrupt:
        progress("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
