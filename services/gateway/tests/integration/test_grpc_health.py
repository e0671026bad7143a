"""The gateway's gRPC health says what its `/readyz` says: SERVING only while the
backends are ready, so a gRPC probe waits for the models as an HTTP one does."""

from __future__ import annotations

from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from servekit_protocol.services import PREDICTION_SERVICE

from tests.support.gateway import GatewayProcess, running_gateway
from tests.support.modelserver import ModelServer
from tests.support.processes import free_port, wait_until

pytestmark = pytest.mark.integration

SERVICES = ("", PREDICTION_SERVICE)


def _health(gateway: GatewayProcess, service: str) -> int:
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=10
        )
    return int(answer.status)


def _gateway_env(registry: Path, backend: str) -> dict[str, str]:
    return {
        "GATEWAY_REGISTRY": str(registry),
        "GATEWAY_DEFAULT_BACKEND": backend,
        "PYTHONPATH": "",
    }


def test_health_is_not_serving_while_the_backend_is_unreachable(
    tmp_path: Path,
) -> None:
    (tmp_path / "registry").mkdir()
    env = _gateway_env(tmp_path / "registry", f"127.0.0.1:{free_port()}")
    with running_gateway(tmp_path, env=env) as gateway:
        # From the moment the gateway says it listens, not only after a while.
        for service in SERVICES:
            assert (
                _health(gateway, service) == health_pb2.HealthCheckResponse.NOT_SERVING
            )
        assert httpx.get(f"{gateway.url}/readyz", timeout=10).status_code == 503


def test_health_is_serving_once_the_backend_is_ready(
    tmp_path: Path, main_model_server: ModelServer
) -> None:
    (tmp_path / "registry").mkdir()
    env = _gateway_env(tmp_path / "registry", main_model_server.grpc_target)
    with running_gateway(tmp_path, env=env) as gateway:
        wait_until(
            lambda: all(
                _health(gateway, service) == health_pb2.HealthCheckResponse.SERVING
                for service in SERVICES
            ),
            timeout=30,
            process=gateway.process,
            what="gateway gRPC health SERVING",
        )
        assert httpx.get(f"{gateway.url}/readyz", timeout=10).status_code == 200
