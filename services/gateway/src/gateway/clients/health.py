"""A backend's own readiness, asked through the standard gRPC health service.

The servekit model server reports SERVING only while every model it is
configured to serve has its wanted versions loaded. TF Serving serves the
health service when started with ``--enable_grpc_healthcheck_service`` (and
opens its port only once its initial models have loaded); without that flag
the call is UNIMPLEMENTED, and the gateway's per-model status checks decide.
"""

from __future__ import annotations

import enum

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.clients.pool import Backend


class BackendHealth(enum.Enum):
    """What a backend's health service said."""

    SERVING = "serving"
    NOT_SERVING = "not serving"
    NO_HEALTH_SERVICE = "no health service"
    UNREACHABLE = "unreachable"

    @property
    def ready(self) -> bool:
        """Whether this answer lets the gateway count the backend as ready."""
        return self in (BackendHealth.SERVING, BackendHealth.NO_HEALTH_SERVICE)


async def backend_health(backend: Backend, timeout: float) -> BackendHealth:
    """Ask ``backend``'s gRPC health service about the whole server ("")."""
    stub = health_pb2_grpc.HealthStub(backend.channel)
    try:
        answer = await stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
            return BackendHealth.NO_HEALTH_SERVICE
        return BackendHealth.UNREACHABLE
    if answer.status == health_pb2.HealthCheckResponse.SERVING:
        return BackendHealth.SERVING
    return BackendHealth.NOT_SERVING
