"""Run ``servekit-model-server`` as a subprocess for a test.

:func:`model_server` starts it on 127.0.0.1 with free ports, waits until gRPC
health answers SERVING (the initial model loads are done), yields a
:class:`ModelServer` with its URLs and log, and always stops it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.processes import (
    VENV_BIN,
    ServerProcess,
    free_port,
    running_process,
)

MODEL_SERVER = VENV_BIN / "servekit-model-server"


@dataclass
class ModelServer:
    """A running model server."""

    process: ServerProcess
    grpc_port: int
    rest_port: int

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


def health_serving(target: str, service: str = "") -> bool:
    """Whether the gRPC health service at ``target`` reports SERVING."""
    try:
        with grpc.insecure_channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            answer = stub.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=2
            )
            return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.RpcError:
        return False


@contextlib.contextmanager
def model_server(
    flags: Sequence[str],
    *,
    log_path: Path,
    ready_timeout: float = 120.0,
) -> Iterator[ModelServer]:
    """Start the server with ``flags`` (ports and host are added) until exit."""
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
    with running_process(
        argv,
        log_path=log_path,
        ready=lambda: health_serving(target),
        ready_timeout=ready_timeout,
    ) as process:
        yield ModelServer(process=process, grpc_port=grpc_port, rest_port=rest_port)
