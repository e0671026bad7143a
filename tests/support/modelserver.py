"""Run ``servekit-model-server`` as a subprocess for a test.

:func:`model_server` starts it on 127.0.0.1 with free ports, waits until gRPC
health answers SERVING (the initial model loads are done), yields a
:class:`ModelServer` with its URLs and log, and always stops it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.processes import (
    VENV_BIN,
    ServerProcess,
    file_size_limited,
    free_port,
    running_process,
)

MODEL_SERVER = VENV_BIN / "servekit-model-server"
METRICS_PATH = "/monitoring/prometheus/metrics"
"""Where `write_monitoring_config` puts the Prometheus page."""


def write_monitoring_config(directory: Path) -> Path:
    """A `--monitoring_config_file` that serves Prometheus text at METRICS_PATH."""
    path = directory / "monitoring.config"
    path.write_text(f'prometheus_config {{ enable: true, path: "{METRICS_PATH}" }}\n')
    return path


@dataclass
class ModelServer:
    """A running model server.

    ``health_seen`` holds the gRPC health answers (status names) observed while
    waiting for it to be ready, in order, without repeats.
    """

    process: ServerProcess
    grpc_port: int
    rest_port: int
    health_seen: list[str] = field(default_factory=list)

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


def health_status(target: str, service: str = "") -> str | None:
    """The gRPC health status name at ``target`` (None when it does not answer)."""
    try:
        with grpc.insecure_channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            answer = stub.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=2
            )
    except grpc.RpcError:
        return None
    name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    return name


def health_serving(target: str, service: str = "") -> bool:
    """Whether the gRPC health service at ``target`` reports SERVING."""
    return health_status(target, service) == "SERVING"


@contextlib.contextmanager
def model_server(
    flags: Sequence[str],
    *,
    log_path: Path,
    ready_timeout: float = 120.0,
    file_size_limit: int | None = None,
) -> Iterator[ModelServer]:
    """Start the server with ``flags`` (ports and host are added) until exit;
    with ``file_size_limit``, under :func:`~tests.support.processes.file_size_limited`."""
    grpc_port = free_port()
    rest_port = free_port()
    while rest_port == grpc_port:
        rest_port = free_port()
    argv: list[str | os.PathLike[str]] = [
        MODEL_SERVER,
        f"--port={grpc_port}",
        f"--rest_api_port={rest_port}",
        "--host=127.0.0.1",
        *flags,
    ]
    target = f"127.0.0.1:{grpc_port}"
    seen: list[str] = []

    def ready() -> bool:
        status = health_status(target)
        if status is not None and (not seen or seen[-1] != status):
            seen.append(status)
        return status == "SERVING"

    if file_size_limit is not None:
        argv = [*file_size_limited(argv, file_size_limit)]
    with running_process(
        argv, log_path=log_path, ready=ready, ready_timeout=ready_timeout
    ) as process:
        yield ModelServer(
            process=process, grpc_port=grpc_port, rest_port=rest_port, health_seen=seen
        )
