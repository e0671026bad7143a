"""The systems in front of a model server: the gateway and the bare relay."""

from __future__ import annotations

import json
import sys

from benchmarks.deployment import Pending, scenarios
from benchmarks.grpcload import PREDICT_METHOD
from benchmarks.payloads import ModelPayloads
from benchmarks.servers import ProcessSet, StartError, free_port, http_post_succeeds
from benchmarks.settings import REPO_ROOT, VENV_BIN, BenchOptions
from benchmarks.targets import GrpcTarget, HttpTarget

GATEWAY_SYSTEMS = (
    "gateway",
    "gateway-unmerged",
    "gateway-v2",
    "gateway-grpcio",
    "gateway-h2",
)
INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
FRONT_SYSTEMS = (*GATEWAY_SYSTEMS, "relay")
"""Systems in front of the gateway backend, which must run when any of them does."""


def start_gateway(
    options: BenchOptions,
    models: list[ModelPayloads],
    processes: ProcessSet,
    backends: dict[str, Pending],
    system: str,
) -> Pending:
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
    if system in ("gateway-grpcio", "gateway-h2"):
        # Every gRPC call over plain gRPC, as to TF Serving, with either client.
        environment["GATEWAY_BACKEND_GRPC_WEB"] = "false"
        environment["GATEWAY_BACKEND_GRPC_CLIENT"] = system.removeprefix("gateway-")
    process = processes.start(
        system,
        [str(VENV_BIN / "servekit-gateway")],
        cpu=options.server_cpu,
        env=environment,
        cwd=REPO_ROOT,
    )
    item = Pending(process, {}, backends=backends)
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
        item.scenarios += scenarios(model.name, system, options.protocols, http, rpc)
    return item


def start_relays(
    options: BenchOptions,
    models: list[ModelPayloads],
    processes: ProcessSet,
    backends: dict[str, Pending],
) -> list[Pending]:
    """One bare relay per model, in front of that model's server."""
    started: list[Pending] = []
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
        item = Pending(
            process,
            {model.name: http_post_succeeds(url, model.tfs_rest.read_bytes())},
            backends={model.name: backend},
        )
        item.scenarios += scenarios(
            model.name,
            "relay",
            options.protocols,
            HttpTarget(url, model.tfs_rest),
            GrpcTarget(f"127.0.0.1:{grpc_port}", PREDICT_METHOD, model.tfs_grpc),
        )
        started.append(item)
    return started
