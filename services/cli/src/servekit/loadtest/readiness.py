"""Wait until the target is ready before a load test sends its first request.

Ready has one meaning (DESIGN.md "Readiness"): every model the server is
configured to serve has its wanted versions loaded. Over HTTP the gateway answers
it at ``/readyz`` and the model server at ``/v2/health/ready``; over gRPC both
answer the standard health service. TF Serving has neither over HTTP, nor gRPC
health unless started with ``--enable_grpc_healthcheck_service``: for it the
tested model's own status must show an AVAILABLE version.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

READINESS_PATHS = ("/readyz", "/v2/health/ready")
POLL_SECONDS = 0.25


class NotReady(Exception):
    """The target did not become ready in time."""


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=2.0) as response:
            return int(response.status), json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return int(error.code), None
    except (OSError, ValueError):
        return 0, None


def _available(body: Any) -> bool:
    if not isinstance(body, dict):
        return False
    return any(
        entry.get("state") == "AVAILABLE"
        for entry in body.get("model_version_status", [])
    )


def http_ready(base_url: str, model: str) -> Callable[[], bool]:
    """A check of an HTTP target's readiness (its first readiness path that exists)."""
    base = base_url.rstrip("/")

    def check() -> bool:
        for path in READINESS_PATHS:
            status, _ = _get(base + path)
            if status == 200:
                return True
            if status not in (404, 405):
                return False  # that path exists and says not ready, or no answer
        status, body = _get(f"{base}/v1/models/{model}")
        return status == 200 and _available(body)

    return check


def grpc_ready(target: str, model: str) -> Callable[[], bool]:
    """A check of a gRPC target's readiness (health, else the model's status)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from servekit_protocol import messages
    from servekit_protocol.services import ModelServiceStub

    def check() -> bool:
        with grpc.insecure_channel(target) as channel:
            try:
                answer = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=2.0
                )
                return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                    return False
            request = messages.GetModelStatusRequest()
            request.model_spec.name = model
            try:
                status = ModelServiceStub(channel).GetModelStatus(request, timeout=2.0)
            except grpc.RpcError:
                return False
            return any(
                entry.state == messages.ModelVersionStatus.State.AVAILABLE
                for entry in status.model_version_status
            )

    return check


def wait_until_ready(
    check: Callable[[], bool],
    timeout: float,
    waiting: Callable[[float], None] | None = None,
) -> float:
    """Poll ``check`` until true; return the seconds waited.

    Raises:
        NotReady: ``timeout`` seconds passed first.
    """
    started = time.monotonic()
    while not check():
        waited = time.monotonic() - started
        if waited > timeout:
            raise NotReady(f"not ready after {timeout:g} s")
        if waiting is not None:
            waiting(waited)
        time.sleep(POLL_SECONDS)
    return time.monotonic() - started
