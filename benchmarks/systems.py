"""Start every system under test and name what to load on each of them.

All servers bind 127.0.0.1 and run pinned to the server core; they start together
(so the slow TensorFlow imports overlap) and each is checked with one real request
before any load: a system that answers errors is never benchmarked.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from benchmarks.deployment import (
    Deployment,
    Pending,
    Scenario,
    check_scenario,
    scenarios,
)
from benchmarks.fronts import GATEWAY_SYSTEMS, start_gateway, start_relays
from benchmarks.grpcload import PREDICT_METHOD
from benchmarks.mlservers import RequestBuild, start_mlservers
from benchmarks.modelservers import start_model_servers
from benchmarks.payloads import ModelPayloads
from benchmarks.report import LABELS
from benchmarks.servers import (
    ProcessSet,
    StartError,
    file_exists,
    free_port,
    http_post_succeeds,
    wait_models,
)
from benchmarks.settings import REPO_ROOT, BenchOptions
from benchmarks.targets import GrpcTarget, HttpTarget

__all__ = ["Deployment", "Scenario", "start_systems"]

Progress = Callable[[str], None]


START_TIMEOUT = 300.0
"""Seconds a server may take to serve its first model (TensorFlow on a busy core)."""

MODEL_GRACE = 90.0
"""Seconds the other models get once the first model of any server serves."""


def _start_fastapi(
    options: BenchOptions, models: list[ModelPayloads], processes: ProcessSet
) -> list[Pending]:
    pending: list[Pending] = []
    for model in models:
        port = free_port()
        process = processes.start(
            f"fastapi-{model.name}",
            [sys.executable, "-m", "benchmarks.plainapp"]
            + ["--registry", str(options.registry), "--model", model.name]
            + ["--port", str(port)],
            cpu=options.server_cpu,
            cwd=REPO_ROOT,
        )
        url = f"http://127.0.0.1:{port}/predict"
        pending.append(
            Pending(
                process,
                {model.name: http_post_succeeds(url, model.tfs_rest.read_bytes())},
                scenarios(
                    model.name,
                    "fastapi",
                    ("rest",),
                    HttpTarget(url, model.tfs_rest),
                    None,
                ),
            )
        )
    return pending


def _start_trivial_grpc(options: BenchOptions, processes: ProcessSet) -> Pending:
    port_file = options.work_dir / "trivial-grpc.port"
    port_file.unlink(missing_ok=True)
    process = processes.start(
        "grpc-ceiling",
        [sys.executable, "-m", "benchmarks.grpcload", "serve"]
        + ["--port-file", str(port_file)],
        cpu=options.server_cpu,
        cwd=REPO_ROOT,
    )
    return Pending(process, {"-": file_exists(port_file)})


def start_systems(
    options: BenchOptions,
    payloads: dict[str, ModelPayloads],
    processes: ProcessSet,
    mlserver: Path | None,
    progress: Progress,
) -> Deployment:
    """Start the selected systems, wait until each answers, list the scenarios.

    Every process starts before any is waited for, so their start-ups overlap.

    Raises:
        StartError: A server did not start or answered a checked request wrongly.
    """
    deployment = Deployment()
    builds: list[RequestBuild] = []
    try:
        return _start_all(
            options, payloads, processes, mlserver, progress, deployment, builds
        )
    finally:
        for build in builds:
            build.stop()


def _start_all(
    options: BenchOptions,
    payloads: dict[str, ModelPayloads],
    processes: ProcessSet,
    mlserver: Path | None,
    progress: Progress,
    deployment: Deployment,
    builds: list[RequestBuild],
) -> Deployment:
    models = [payloads[name] for name in options.models]
    servers = start_model_servers(options, models, processes)
    pending = [item for by_model in servers.values() for item in by_model.values()]
    gateways = [name for name in GATEWAY_SYSTEMS if options.wants(name)]
    for name in gateways:
        pending.append(
            start_gateway(
                options, models, processes, servers[options.gateway_backend], name
            )
        )
    if options.wants("relay"):
        pending += start_relays(
            options, models, processes, servers[options.gateway_backend]
        )
        deployment.notes.append(
            "The bare relay (one per model) forwards each request to the same "
            "model server as the gateway: on REST it sends the model's ready-made "
            "PredictRequest and answers the reply's size, on gRPC it passes the "
            "bytes through; no parsing, routing, auth, metrics or logs. Its added "
            "p50 is the cost of the REST→gRPC or gRPC→gRPC hop itself."
        )
    deployment.notes.append(
        "Each servekit model server process serves one model, as deployed."
    )
    if gateways:
        deployment.notes.append(
            f"The gateway forwards to {LABELS[options.gateway_backend]} (the model's "
            "own process); all share the server core. A REST :predict goes to the "
            "backend's REST API: alone as it came, and concurrent ones of one model "
            "merged as JSON into one call; gRPC Predicts go to the same port as "
            "gRPC-Web, merged into one call (at most 32 rows, one call in flight). "
            "The coalescing-off gateway sends every request on its own."
        )
    if options.wants("mlserver") or options.wants("mlserver-batching"):
        if mlserver is None:
            raise StartError("MLServer was selected but is not installed")
        pending += start_mlservers(options, models, processes, mlserver, builds)
        deployment.notes += [
            f"MLServer skipped for {model.name!r}: mlserver + mlserver-sklearn has no "
            "TensorFlow runtime."
            for model in models
            if model.framework != "sklearn"
        ]
    if options.wants("fastapi") and "rest" in options.protocols:
        pending += _start_fastapi(options, models, processes)
    trivial: Pending | None = None
    if options.wants("grpc-ceiling") and "grpc" in options.protocols:
        trivial = _start_trivial_grpc(options, processes)
        pending.append(trivial)

    for build in builds:
        build.wait()
    scenarios: list[Scenario] = []
    grace_deadline: float | None = None
    for item in pending:
        name = item.process.name
        probes = item.probes
        if item.backends:
            probes = {m: p for m, p in probes.items() if m in item.backends[m].ready}
        if not probes:
            continue
        progress(f"waiting for {name} to serve {', '.join(probes)} …")
        ready, seconds, grace_deadline = wait_models(
            item.process,
            probes,
            timeout=START_TIMEOUT,
            grace=MODEL_GRACE,
            grace_deadline=grace_deadline,
        )
        item.ready = ready
        deployment.startup_seconds[name] = round(seconds, 1)
        progress(f"{name} ready after {seconds:.1f} s")
        for model in sorted(set(probes) - ready):
            deployment.notes.append(
                f"{name} never served {model!r} (see {item.process.log_path}); "
                f"its {model} runs are missing."
            )
            progress(f"{name}: {model!r} NOT READY, its runs are skipped")
        for scenario in item.scenarios:
            if scenario.model not in ready:
                continue
            groups: tuple[int, ...] = (item.process.popen.pid,)
            if scenario.model in item.backends:
                groups += (item.backends[scenario.model].process.popen.pid,)
            scenarios.append(replace(scenario, process_groups=groups))

    if trivial is not None:
        empty = options.work_dir / "payloads" / "empty.bin"
        empty.write_bytes(b"")
        port = int((options.work_dir / "trivial-grpc.port").read_text())
        target = GrpcTarget(f"127.0.0.1:{port}", PREDICT_METHOD, empty)
        groups = (trivial.process.popen.pid,)
        scenarios.append(Scenario("-", "grpc", "grpc-ceiling", target, groups))

    for scenario in scenarios:
        checked, answer = check_scenario(scenario)
        deployment.scenarios.append(checked)
        key = f"{scenario.system} {scenario.model}/{scenario.protocol}"
        deployment.answers[key] = answer
        progress(f"checked {key}: {answer}")
    return deployment
