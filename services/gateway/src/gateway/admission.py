"""Admission: what a request must pass before any backend work is done for it.

A slot among `max_in_flight` (shed with 503 rather than queued), a deadline from
the client's timeout capped by the gateway's own, the caller's key checked
for the model's scope and the key's rate, and the size of its tensors
(`tensor_limits`, checked by the adapters before decoding any).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from servekit_protocol.tensor_limits import TensorLimits

from gateway.errors import GatewayError, Overloaded
from gateway.observability.metrics import GatewayMetrics
from gateway.security.credentials import CredentialCheck, FailedAuthLimiter
from gateway.security.keys import Authenticator, Principal
from gateway.settings import Settings


class InFlight:
    """The count of requests in flight, as a reusable context manager (one per
    gateway): a generator-based one costs a few objects per request."""

    def __init__(self, limit: int, metrics: GatewayMetrics) -> None:
        self.limit = limit
        self.in_flight = 0
        self._gauge = metrics.in_flight
        self._rejections = metrics.rejections.labels("overloaded")

    def __enter__(self) -> None:
        if self.in_flight >= self.limit:
            self._rejections.inc()
            raise Overloaded(
                f"too many requests in flight ({self.limit}); retry shortly"
            )
        self.in_flight += 1
        self._gauge.inc()

    def __exit__(self, *exc_info: object) -> None:
        self.in_flight -= 1
        self._gauge.dec()


class Admission:
    """The checks every model request passes, whatever its protocol."""

    def __init__(
        self,
        settings: Settings,
        metrics: GatewayMetrics,
        authenticator: Authenticator,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self.authenticator = authenticator
        self.credentials = CredentialCheck(
            authenticator,
            FailedAuthLimiter(
                per_second=settings.auth_failures_per_second,
                burst=settings.auth_failure_burst,
            ),
        )
        """The header-only key check every listener runs before reading a body."""
        self.slots = InFlight(settings.max_in_flight, metrics)
        self.tensor_limits = TensorLimits(
            max_elements=settings.max_request_tensor_elements,
            max_bytes=settings.max_request_tensor_bytes,
        )
        """The most one Predict's tensors may hold together."""

    def deadline(self, timeout_ms: float | None) -> float:
        """Absolute deadline from a client timeout, capped by `max_timeout_ms`."""
        settings = self._settings
        wanted = (
            settings.default_timeout_ms
            if timeout_ms is None or timeout_ms <= 0
            else timeout_ms
        )
        return time.monotonic() + min(wanted, settings.max_timeout_ms) / 1000.0

    def authenticate(self, headers: Mapping[str, str], client: str) -> Principal:
        """Who is calling, from the headers alone (before any body is read).

        Raises:
            Unauthenticated: auth is on and the key is missing or unknown.
            RateLimited: the client address made too many failed attempts.
        """
        try:
            return self.credentials.check(headers, client)
        except GatewayError as exc:
            self._metrics.rejections.labels(type(exc).__name__).inc()
            raise

    def authorize(
        self,
        model: str,
        authorization: str | None,
        api_key: str | None,
        client: str = "",
    ) -> Principal:
        """Authenticate the caller and check the model is in its scopes and rate.

        Raises:
            Unauthenticated, PermissionDenied, RateLimited.
        """
        headers = {}
        if authorization is not None:
            headers["authorization"] = authorization
        if api_key is not None:
            headers["x-api-key"] = api_key
        try:
            principal = self.credentials.check(headers, client)
            self.authenticator.authorize(principal, model)
        except GatewayError as exc:
            self._metrics.rejections.labels(type(exc).__name__).inc()
            raise
        return principal
