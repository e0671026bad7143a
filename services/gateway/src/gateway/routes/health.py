"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.dataplane import Gateway
from gateway.routes.handling import gateway_of, json_response


class ReadinessCache:
    """Readiness checks call the backends; probes and load balancers poll often,
    so one answer is reused for `ttl` seconds and concurrent probes share a check."""

    def __init__(self, gateway: Gateway, ttl: float = 1.0) -> None:
        self._gateway = gateway
        self._ttl = ttl
        self._answer: tuple[bool, dict[str, Any]] | None = None
        self._expires = 0.0
        self._workers_started = False
        self._lock = asyncio.Lock()

    async def check(self) -> tuple[bool, dict[str, Any]]:
        async with self._lock:
            now = time.monotonic()
            # An answer from before the JSON workers started is not reused
            # after: the start is the moment readiness can first turn true.
            started = self._gateway.parsers.started
            if (
                self._answer is None
                or now >= self._expires
                or started != self._workers_started
            ):
                self._answer = await self._gateway.readiness()
                self._expires = time.monotonic() + self._ttl
                self._workers_started = started
            return self._answer


async def healthz(_request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    ready, checks = await request.app.state.readiness.check()
    return json_response(
        {"status": "ready" if ready else "not ready", "checks": checks},
        200 if ready else 503,
    )


async def metrics(request: Request) -> Response:
    registry = gateway_of(request).metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def health_routes() -> list[Route]:
    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
