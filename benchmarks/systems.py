"""Start every system under test and name what to load on each of them.

All servers bind 127.0.0.1 and run pinned to the server core; they start together
(so the slow TensorFlow imports overlap) and each is checked with one real request
before any load: a system that answers errors is never benchmarked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmarks.grpcload import PREDICT_METHOD, V2_INFER_METHOD
from benchmarks.payloads import ModelPayloads
from benchmarks.report import LABELS
from benchmarks.servers import (
    ProcessSet,
    ServerProcess,
    StartError,
    file_exists,
    free_port,
    grpc_call,
    http_post,
    http_post_succeeds,
    wait_models,
)
from benchmarks.settings import REPO_ROOT, VENV_BIN, BenchOptions
from benchmarks.targets import GrpcTarget, HttpTarget

Progress = Callable[[str], None]


START_TIMEOUT = 300.0
"""Seconds a server may take to serve its first model (TensorFlow on a busy core)."""

MODEL_GRACE = 90.0
"""Seconds the other models get once the first model of any server serves."""


@dataclass(frozen=True)
class Scenario:
    """One system serving one model over one protocol: a thing to load."""

    model: str
    protocol: str
    system: str
    target: HttpTarget | GrpcTarget
    process_groups: tuple[int, ...] = ()
    """The serving processes' groups, whose CPU time each run reports."""


@dataclass
class Deployment:
    """The started systems' scenarios, with notes for the report."""

    scenarios: list[Scenario] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    startup_seconds: dict[str, float] = field(default_factory=dict)
    answers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Pending:
    """A started process, one readiness probe per model, and what it will serve."""

    process: ServerProcess
    probes: dict[str, Callable[[], bool]]
    scenarios: list[Scenario] = field(default_factory=list)
    backends: dict[str, _Pending] = field(default_factory=dict)
    """Model -> the process behind this one that serves it (for the gateway)."""
    ready: set[str] = field(default_factory=set)
    address: str = ""
    """The gRPC address, for a model server."""
    rest_address: str = ""
    """The REST address (host:port), for a model server."""


def write_model_config(options: BenchOptions, name: str) -> Path:
    """A model config file naming one model (absolute base path).

    One model per server process, as deployed (scikit-learn models on the model
    server, SavedModels on TF Serving): a process that also hosts TensorFlow runs
    a scikit-learn pipeline measurably slower, and the models' pollers stay out
    of each other's way. The model serves the one version the request payloads
    were built from.
    """
    from modelregistry import ModelEntry, Registry, config_text

    registry = Registry(options.registry)
    version = registry.resolve(name)
    entry = ModelEntry(
        name=name,
        base_path=str(options.registry / name),
        platform=registry.framework(name, version),
        policy={"specific": {"versions": [version]}},
    )
    path = options.work_dir / f"servekit-{name}.config"
    path.write_text(config_text([entry]), encoding="utf-8")
    return path


def _model_server(
    options: BenchOptions,
    processes: ProcessSet,
    system: str,
    batching: bool,
    model: str,
) -> tuple[ServerProcess, str, str]:
    grpc_port, rest_port = free_port(), free_port()
    argv: list[str] = [
        str(VENV_BIN / "servekit-model-server"),
        f"--port={grpc_port}",
        f"--rest_api_port={rest_port}",
        f"--model_config_file={write_model_config(options, model)}",
        "--host=127.0.0.1",
    ]
    if batching:
        parameters = options.work_dir / "batching_parameters.txt"
        parameters.write_text(options.batching.parameters_text(), encoding="utf-8")
        argv += ["--enable_batching=true", f"--batching_parameters_file={parameters}"]
    process = processes.start(
        f"{system}-{model}", argv, cpu=options.server_cpu, cwd=REPO_ROOT
    )
    return process, f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{rest_port}"


def _mlserver_folder(
    options: BenchOptions, payload: ModelPayloads, name: str, batching: bool
) -> tuple[Path, int, int]:
    folder = options.work_dir / "mlserver" / name
    model_folder = folder / payload.name
    model_folder.mkdir(parents=True, exist_ok=True)
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    settings = {
        "host": "127.0.0.1",
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        "parallel_workers": options.mlserver_workers,
        # MLServer's default (debug) logs at DEBUG level; production runs without.
        "debug": False,
    }
    model_settings: dict[str, Any] = {
        "name": payload.name,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {
            "uri": str(payload.version_dir / "model.joblib"),
            "version": str(payload.version),
        },
    }
    if batching:
        model_settings["max_batch_size"] = options.batching.mlserver_max_batch_size
        model_settings["max_batch_time"] = options.batching.mlserver_max_batch_time
    (folder / "settings.json").write_text(json.dumps(settings, indent=2))
    (model_folder / "model-settings.json").write_text(
        json.dumps(model_settings, indent=2)
    )
    return folder, http_port, grpc_port


@dataclass
class _RequestBuild:
    """MLServer's gRPC request being serialized by its own interpreter."""

    popen: subprocess.Popen[bytes]
    out: Path

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()

    def wait(self) -> Path:
        """Wait for the request file.

        Raises:
            StartError: The helper failed.
        """
        try:
            _, stderr = self.popen.communicate(timeout=300)
        except subprocess.TimeoutExpired as exc:
            self.popen.kill()
            raise StartError("building MLServer's gRPC request timed out") from exc
        if self.popen.returncode != 0:
            raise StartError(
                f"cannot build MLServer's gRPC request:\n{stderr.decode()[-1500:]}"
            )
        return self.out


def _mlserver_grpc_request(
    mlserver: Path, payload: ModelPayloads, directory: Path
) -> _RequestBuild:
    # Importing MLServer takes a while on a busy core: run it alongside the servers'
    # start-up instead of before it.
    out = directory / f"{payload.name}.v2.bin"
    helper = Path(__file__).with_name("mlserver_requests.py")
    popen = subprocess.Popen(
        [str(mlserver.parent / "python"), str(helper), str(payload.v2_rest)]
        + [payload.name, str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return _RequestBuild(popen, out)


def _excerpt(body: bytes, limit: int = 100) -> str:
    text = body.decode("utf-8", errors="replace").replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "…"


def check_scenario(scenario: Scenario) -> tuple[Scenario, str]:
    """Send one real request; return the scenario (with the answer size) and answer.

    Raises:
        StartError: The system answered an error.
    """
    target = scenario.target
    where = f"{scenario.system} {scenario.model}/{scenario.protocol}"
    if isinstance(target, HttpTarget):
        status, body = http_post(
            target.url,
            target.body_file.read_bytes(),
            target.content_type,
            headers=target.headers,
        )
        if status != 200:
            raise StartError(f"{where}: HTTP {status}: {_excerpt(body, 400)}")
        try:
            json.loads(body)
        except ValueError as exc:
            raise StartError(f"{where}: answer is not JSON: {_excerpt(body)}") from exc
        return scenario, _excerpt(body)
    import grpc

    try:
        answer = grpc_call(
            target.address, target.path, target.request_file.read_bytes()
        )
    except grpc.RpcError as exc:
        raise StartError(f"{where}: gRPC call failed: {exc}") from exc
    checked = replace(scenario, target=replace(target, response_bytes=len(answer)))
    return checked, f"{len(answer)} bytes"


def _scenarios(
    model: str,
    system: str,
    protocols: tuple[str, ...],
    http: HttpTarget | None,
    rpc: GrpcTarget | None,
) -> list[Scenario]:
    found: list[Scenario] = []
    if http is not None and "rest" in protocols:
        found.append(Scenario(model, "rest", system, http))
    if rpc is not None and "grpc" in protocols:
        found.append(Scenario(model, "grpc", system, rpc))
    return found


def _start_model_servers(
    options: BenchOptions,
    models: list[ModelPayloads],
    processes: ProcessSet,
) -> dict[str, dict[str, _Pending]]:
    """System -> model -> the started process serving it."""
    started: dict[str, dict[str, _Pending]] = {}
    for system, batching in (("servekit", False), ("servekit-batching", True)):
        behind_gateway = system == options.gateway_backend and any(
            options.wants(name) for name in FRONT_SYSTEMS
        )
        if not (options.wants(system) or behind_gateway):
            continue
        for model in models:
            process, grpc_address, rest_base = _model_server(
                options, processes, system, batching, model.name
            )
            url = f"{rest_base}/v1/models/{model.name}:predict"
            item = _Pending(
                process,
                {model.name: http_post_succeeds(url, model.tfs_rest.read_bytes())},
            )
            item.address = grpc_address
            item.rest_address = rest_base.removeprefix("http://")
            if options.wants(system):
                item.scenarios += _scenarios(
                    model.name,
                    system,
                    options.protocols,
                    HttpTarget(url, model.tfs_rest),
                    GrpcTarget(grpc_address, PREDICT_METHOD, model.tfs_grpc),
                )
            started.setdefault(system, {})[model.name] = item
    return started


GATEWAY_SYSTEMS = ("gateway", "gateway-unmerged", "gateway-v2")
INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
FRONT_SYSTEMS = (*GATEWAY_SYSTEMS, "relay")
"""Systems in front of the gateway backend, which must run when any of them does."""


def _start_gateway(
    options: BenchOptions,
    models: list[ModelPayloads],
    processes: ProcessSet,
    backends: dict[str, _Pending],
    system: str,
) -> _Pending:
    by_framework: dict[str, str] = {}
    for model in models:
        address = by_framework.setdefault(model.framework, backends[model.name].address)
        if address != backends[model.name].address:
            raise StartError(
                f"two {model.framework} models need two backends; the bench routes "
                "by framework"
            )
    http_port, grpc_port = free_port(), free_port()
    environment = {
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(http_port),
        "GATEWAY_GRPC_PORT": str(grpc_port),
        "GATEWAY_REGISTRY": str(options.registry),
        "GATEWAY_FRAMEWORK_BACKENDS": json.dumps(by_framework),
        "GATEWAY_REST_BACKENDS": json.dumps(
            {
                backends[model.name].address: backends[model.name].rest_address
                for model in models
            }
        ),
    }
    if system == "gateway-unmerged":
        environment["GATEWAY_COALESCE_MAX_ROWS"] = "0"
    process = processes.start(
        system,
        [str(VENV_BIN / "servekit-gateway")],
        cpu=options.server_cpu,
        env=environment,
        cwd=REPO_ROOT,
    )
    item = _Pending(process, {}, backends=backends)
    base = f"http://127.0.0.1:{http_port}"
    for model in models:
        url = f"{base}/v1/models/{model.name}:predict"
        # Ready when a prediction makes it through to the backend.
        item.probes[model.name] = http_post_succeeds(url, model.tfs_rest.read_bytes())
        http = HttpTarget(url, model.tfs_rest)
        rpc = GrpcTarget(f"127.0.0.1:{grpc_port}", PREDICT_METHOD, model.tfs_grpc)
        if system == "gateway-v2":
            # The Open Inference Protocol as tritonclient sends it, same gateway.
            http = HttpTarget(
                f"{base}/v2/models/{model.name}/infer",
                model.v2_binary,
                "application/octet-stream",
                (("Inference-Header-Content-Length", str(model.v2_binary_header)),),
            )
            rpc = GrpcTarget(rpc.address, INFER_METHOD, model.v2_grpc)
        item.scenarios += _scenarios(model.name, system, options.protocols, http, rpc)
    return item


def _start_relays(
    options: BenchOptions,
    models: list[ModelPayloads],
    processes: ProcessSet,
    backends: dict[str, _Pending],
) -> list[_Pending]:
    """One bare relay per model, in front of that model's server."""
    started: list[_Pending] = []
    for model in models:
        backend = backends[model.name]
        http_port, grpc_port = free_port(), free_port()
        process = processes.start(
            f"relay-{model.name}",
            [sys.executable, "-m", "benchmarks.relay"]
            + ["--backend", backend.address, "--request", str(model.tfs_grpc)]
            + ["--http-port", str(http_port), "--grpc-port", str(grpc_port)],
            cpu=options.server_cpu,
            cwd=REPO_ROOT,
        )
        url = f"http://127.0.0.1:{http_port}/v1/models/{model.name}:predict"
        item = _Pending(
            process,
            {model.name: http_post_succeeds(url, model.tfs_rest.read_bytes())},
            backends={model.name: backend},
        )
        item.scenarios += _scenarios(
            model.name,
            "relay",
            options.protocols,
            HttpTarget(url, model.tfs_rest),
            GrpcTarget(f"127.0.0.1:{grpc_port}", PREDICT_METHOD, model.tfs_grpc),
        )
        started.append(item)
    return started


def _start_mlservers(
    options: BenchOptions,
    models: list[ModelPayloads],
    processes: ProcessSet,
    mlserver: Path,
    builds: list[_RequestBuild],
) -> list[_Pending]:
    pending: list[_Pending] = []
    for system, batching in (("mlserver", False), ("mlserver-batching", True)):
        if not options.wants(system):
            continue
        for model in models:
            if model.framework != "sklearn":
                continue
            folder, http_port, grpc_port = _mlserver_folder(
                options, model, system, batching
            )
            process = processes.start(
                f"{system}-{model.name}",
                [str(mlserver), "start", str(folder)],
                cpu=options.server_cpu,
                # The pickle references the model's own module in its code folder.
                env={"PYTHONPATH": str(model.version_dir / "code")},
                cwd=folder,
            )
            url = f"http://127.0.0.1:{http_port}/v2/models/{model.name}/infer"
            grpc_request = (
                _mlserver_grpc_request(mlserver, model, options.work_dir / "payloads")
                if "grpc" in options.protocols
                else None
            )
            if grpc_request is not None:
                builds.append(grpc_request)
            pending.append(
                _Pending(
                    process,
                    {model.name: http_post_succeeds(url, model.v2_rest.read_bytes())},
                    _scenarios(
                        model.name,
                        system,
                        options.protocols,
                        HttpTarget(url, model.v2_rest),
                        None
                        if grpc_request is None
                        else GrpcTarget(
                            f"127.0.0.1:{grpc_port}", V2_INFER_METHOD, grpc_request.out
                        ),
                    ),
                )
            )
    return pending


def _start_fastapi(
    options: BenchOptions, models: list[ModelPayloads], processes: ProcessSet
) -> list[_Pending]:
    pending: list[_Pending] = []
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
            _Pending(
                process,
                {model.name: http_post_succeeds(url, model.tfs_rest.read_bytes())},
                _scenarios(
                    model.name,
                    "fastapi",
                    ("rest",),
                    HttpTarget(url, model.tfs_rest),
                    None,
                ),
            )
        )
    return pending


def _start_trivial_grpc(options: BenchOptions, processes: ProcessSet) -> _Pending:
    port_file = options.work_dir / "trivial-grpc.port"
    port_file.unlink(missing_ok=True)
    process = processes.start(
        "grpc-ceiling",
        [sys.executable, "-m", "benchmarks.grpcload", "serve"]
        + ["--port-file", str(port_file)],
        cpu=options.server_cpu,
        cwd=REPO_ROOT,
    )
    return _Pending(process, {"-": file_exists(port_file)})


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
    builds: list[_RequestBuild] = []
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
    builds: list[_RequestBuild],
) -> Deployment:
    models = [payloads[name] for name in options.models]
    servers = _start_model_servers(options, models, processes)
    pending = [item for by_model in servers.values() for item in by_model.values()]
    gateways = [name for name in GATEWAY_SYSTEMS if options.wants(name)]
    for name in gateways:
        pending.append(
            _start_gateway(
                options, models, processes, servers[options.gateway_backend], name
            )
        )
    if options.wants("relay"):
        pending += _start_relays(
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
        pending += _start_mlservers(options, models, processes, mlserver, builds)
        deployment.notes += [
            f"MLServer skipped for {model.name!r}: mlserver + mlserver-sklearn has no "
            "TensorFlow runtime."
            for model in models
            if model.framework != "sklearn"
        ]
    if options.wants("fastapi") and "rest" in options.protocols:
        pending += _start_fastapi(options, models, processes)
    trivial: _Pending | None = None
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
